//! `GET /openapi.json`: the OpenAPI 3.1 description of every endpoint, generated from the
//! handlers' own annotations and the wire types (utoipa). `schemas/openapi.json` is the
//! committed copy; a test fails when it is stale (`agent-sidecar openapi > schemas/openapi.json`).

use axum::Json;
use axum::Router;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "agent-sidecar",
        description = "Runs a Rails app's AI agents as supervised subprocesses and calls Rails back, signed. Errors are RFC 9457 application/problem+json.",
    ),
    paths(
        super::trigger::trigger,
        super::jobs::list,
        super::jobs::status,
        super::jobs::status_alias,
        super::jobs::cancel,
        super::jobs::nodes,
        super::jobs::retry,
        super::bulk::cancel,
        super::bulk::retry,
        super::overview::overview,
        super::overview::counts,
        super::agents::list,
        super::agents::pause,
        super::agents::resume,
        super::agents::pause_all,
        super::agents::resume_all,
        super::artifacts::artifact,
        super::artifacts::output_file,
        super::watch::sse,
        super::watch::websocket,
        super::deliveries::list,
        super::deliveries::one,
        super::deliveries::redrive_one,
        super::deliveries::redrive_matching,
        super::deliveries::deliver_one,
        super::keys::jwks,
        super::ops::health,
        super::ops::ready,
        super::ops::metrics,
        document,
    ),
    components(schemas(crate::contract::JobEvent)),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Trigger, inspect, list and cancel jobs"),
        (name = "agents", description = "The agents: state, limits, load; pause and resume"),
        (name = "watch", description = "Follow a job live, with replay"),
        (name = "deliveries", description = "Completion callbacks: dead letters, redrive, and deliver now"),
        (name = "keys", description = "Public keys of callback signatures"),
        (name = "ops", description = "Health, readiness, metrics, this document"),
    )
)]
struct ApiDoc;

/// The `bearer` scheme the protected operations name (a JWT from Rails; `[server.auth]`).
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document, as served and as committed.
pub fn document_json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(document))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
async fn document() -> Json<serde_json::Value> {
    Json(serde_json::to_value(ApiDoc::openapi()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// Follows a `$ref` into `components/schemas`.
    fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap_or_default()],
            None => schema,
        }
    }

    /// Every string constraint of `trigger-request.json` (pattern, lengths), nested objects
    /// included, stands in the OpenAPI document too: a client generated from it (or a fuzzer)
    /// must not send what the schema refuses.
    #[test]
    fn the_trigger_in_openapi_carries_every_string_constraint_of_its_json_schema() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas/v1/trigger-request.json");
        let json_schema: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let doc: Value = serde_json::from_str(&super::document_json()).unwrap();
        let mut missing = Vec::new();
        let mut stack = vec![(
            String::new(),
            json_schema.clone(),
            doc["components"]["schemas"]["TriggerRequest"].clone(),
        )];
        while let Some((at, want, have)) = stack.pop() {
            let have = resolve(&doc, &have).clone();
            for key in ["pattern", "minLength", "maxLength"] {
                if !want[key].is_null() && want[key] != have[key] {
                    missing.push(format!("{at}: {key} {} vs {}", want[key], have[key]));
                }
            }
            if let Some(props) = want["properties"].as_object() {
                for (name, sub) in props {
                    let other = have["properties"][name].clone();
                    stack.push((format!("{at}/{name}"), sub.clone(), other));
                }
            }
        }
        assert!(missing.is_empty(), "OpenAPI lacks: {missing:?}");
    }

    #[test]
    fn the_committed_openapi_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/openapi.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == super::document_json(),
            "schemas/openapi.json is stale: run `cargo run -- openapi > schemas/openapi.json`"
        );
    }

    #[test]
    fn every_operation_documents_its_problem_answers() {
        let doc: serde_json::Value = serde_json::from_str(&super::document_json()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                for (status, response) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert!(
                            response["content"]["application/problem+json"].is_object(),
                            "{method} {path} {status} is not problem+json"
                        );
                    }
                }
            }
        }
    }
}
