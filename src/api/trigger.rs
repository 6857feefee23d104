//! `POST /agents/trigger`: validate the request and the job folder, persist, answer 202.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::auth::Principal;
use super::{AppState, refusal};
use std::collections::BTreeSet;
use std::time::Duration;

use crate::config::Config;
use crate::contract::{
    AgentName, FieldError, Inputs, Manifest, SchemaKind, Timestamp, TriggerAccepted,
    TriggerRequest, from_value_at, parse_manifest, schema, trace,
};
use crate::delivery::Transport;
use crate::error::{ApiError, ErrorSource};
use crate::jobdir::hex;
use crate::jobdir::{JobDir, JobDirError};
use crate::store::{Enqueued, JobRecord, NewJob};

/// `Retry-After` while draining: about the time a restart takes.
const DRAINING_RETRY_AFTER_SECS: u32 = 5;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/agents/trigger", post(trigger))
}

/// Accepts a job: validates the request and the job folder, stores it, answers 202.
#[utoipa::path(post, path = "/agents/trigger", tag = "jobs",
    request_body(content = TriggerRequest, content_type = "application/json"),
    params(("traceparent" = Option<String>, Header, nullable = false, description = "W3C trace context; its trace id becomes the job's")),
    responses(
        (status = 202, description = "Stored (or already known with the same body)", body = TriggerAccepted),
        (status = 400, description = "Malformed JSON", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 403, description = "Not allowed for this caller", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 409, description = "Conflicts with the current state (`state`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 413, description = "Body larger than `server.max_body_bytes`", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 415, description = "Not `Content-Type: application/json`", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "A field is invalid (each named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 503, description = "Shutting down, or not ready (`checks`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn trigger(
    State(app): State<AppState>,
    headers: HeaderMap,
    principal: Option<Extension<Principal>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<TriggerAccepted>), ApiError> {
    let answer = receive(app, headers, principal, body).await;
    if let Err(e) = &answer {
        refusal::record(e);
    }
    answer
}

async fn receive(
    app: AppState,
    headers: HeaderMap,
    principal: Option<Extension<Principal>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<TriggerAccepted>), ApiError> {
    if app.inner.runner.is_draining() {
        return Err(draining());
    }
    check_content_type(&headers)?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::too_large(app.inner.config.server.max_body_bytes)
        }
        status => ApiError::unreadable_body(status, e.body_text()),
    })?;
    let (request, request_sha256) = parse_request(&body)?;
    if let Some(Extension(principal)) = &principal {
        check_scope(principal, &request)?;
    }
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    accept(&app, request, request_sha256, traceparent)
        .await
        .map(|(status, body)| (status, Json(body)))
}

/// Only `application/json` (any parameters, any case) is read as a trigger: a browser may send
/// `text/plain` or a form cross-origin without a preflight, so those are never taken.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let essence = value.and_then(|v| v.split(';').next()).map(str::trim);
    match essence {
        Some(e) if e.eq_ignore_ascii_case("application/json") => Ok(()),
        _ => Err(ApiError::unsupported_media_type("application/json", value)),
    }
}

/// The 503 while the sidecar drains.
fn draining() -> ApiError {
    ApiError::unavailable(
        "the sidecar is shutting down and accepts no new jobs",
        DRAINING_RETRY_AFTER_SECS,
    )
}

/// Everything after parsing, shared by the HTTP and folder triggers: idempotency, the
/// registry, the job folder and manifest, the durable enqueue.
pub(super) async fn accept(
    app: &AppState,
    request: TriggerRequest,
    request_sha256: String,
    traceparent: Option<&str>,
) -> Result<(StatusCode, TriggerAccepted), ApiError> {
    let app = &app.inner;
    // A replay is answered from the stored job, before the job folder is read again.
    if let Some(job) = app.store.job(request.job_id).await? {
        return replay(&job, &request_sha256, &app.public_url).map(|(s, Json(b))| (s, b));
    }
    let offered = offered_elsewhere(app, &request.agent_name).await?;
    check_registry(&app.config, &app.deliveries.transport(), &request, &offered)?;
    let modes = app.config.storage.modes;
    let (dir, manifest) = check_manifest(&app.shared_root, modes, &request)?;
    check_input_files(app, dir, manifest).await?;
    let at = Timestamp::now();
    let run_at = start_at(&request, at)?;
    // A scheduled job takes its place in the queue as if accepted at its run_at.
    let sort_at = request
        .priority
        .schedule_key(run_at.unwrap_or(at), app.config.jobs.priority_aging);
    let job = NewJob {
        request,
        request_sha256,
        trace_id: traceparent
            .and_then(trace::trace_id_of)
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
        at,
        sort_at,
        run_at,
    };
    match app
        .store
        .enqueue(job)
        .await?
    {
        Enqueued::Created(job) => {
            tracing::info!(job_id = %job.job_id, job_name = %job.job_name, agent_name = %job.agent_name, trace_id = %job.trace_id, "job {} {}", job.job_id, job.state);
            app.runner.wake();
            Ok(accepted(&job, &app.public_url))
        }
        Enqueued::Duplicate(job) => Ok(accepted(&job, &app.public_url)),
        Enqueued::Conflict(job) => Err(conflict(&job)),
    }
    .map(|(status, Json(body))| (status, body))
}

/// How far before the sidecar's clock a `run_at` may be and still start at once (the two
/// clocks, and the request's time in flight).
pub const RUN_AT_LEEWAY: Duration = Duration::from_secs(60);
/// How far ahead a job may be scheduled (`run_at`, `delay`; `trigger-request.json` says the
/// same of `delay`).
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(30 * 24 * 3600);

/// When a job triggered at `at` may start, if later than now: its `run_at`, or `at` plus its
/// `delay` (one of them at most); `None` to queue it at once. Each refusal names its field.
fn start_at(request: &TriggerRequest, at: Timestamp) -> Result<Option<Timestamp>, ApiError> {
    let refuse = |pointer: &str, detail: String| {
        ApiError::invalid(ErrorSource::Request, vec![FieldError::new(pointer, detail)])
    };
    let latest = at.plus(MAX_SCHEDULE_AHEAD);
    let run_at = match (request.run_at, request.delay) {
        (Some(_), Some(_)) => {
            return Err(refuse(
                "/delay",
                "give run_at or delay, not both".to_owned(),
            ));
        }
        (None, None) => return Ok(None),
        (None, Some(delay)) => {
            // The schema bounds it to [0, 30 days]; a NaN cannot come out of JSON.
            at.plus(Duration::from_secs_f64(
                delay.clamp(0.0, MAX_SCHEDULE_AHEAD.as_secs_f64()),
            ))
        }
        (Some(run_at), None) if run_at < at.minus(RUN_AT_LEEWAY) => {
            return Err(refuse(
                "/run_at",
                format!(
                    "{run_at} is in the past (the sidecar's clock says {at}; at most {} s earlier is taken as now)",
                    RUN_AT_LEEWAY.as_secs()
                ),
            ));
        }
        (Some(run_at), None) if run_at > latest => {
            return Err(refuse(
                "/run_at",
                format!("{run_at} is more than 30 days ahead (at most {latest})"),
            ));
        }
        (Some(run_at), None) => run_at,
    };
    Ok((run_at > at).then_some(run_at))
}

/// A token scoped to some agents may trigger only those.
fn check_scope(principal: &Principal, request: &TriggerRequest) -> Result<(), ApiError> {
    match &principal.agents {
        Some(agents) if !agents.contains(&request.agent_name) => {
            let allowed: Vec<&str> = agents.iter().map(|a| a.as_str()).collect();
            Err(ApiError::forbidden(
                ErrorSource::Request,
                FieldError::new(
                    "/agent_name",
                    format!(
                        "this caller may trigger only: {}",
                        if allowed.is_empty() {
                            "no agent".to_owned()
                        } else {
                            allowed.join(", ")
                        }
                    ),
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Parses and schema-checks the body; returns it with the SHA-256 of its canonical JSON.
pub(super) fn parse_request(body: &[u8]) -> Result<(TriggerRequest, String), ApiError> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| ApiError::malformed_json(&e))?;
    schema::validate(SchemaKind::TriggerRequest, 1, &doc).map_err(schema_refusal)?;
    // serde_json's maps are sorted, so equal documents serialise to equal bytes.
    let canonical = serde_json::to_vec(&doc).map_err(|e| ApiError::internal(&e))?;
    let request = from_value_at(doc).map_err(|e| schema_refusal(vec![e]))?;
    Ok((request, hex(&Sha256::digest(&canonical))))
}

/// A body that breaks `trigger-request.json` itself, told apart (`check: "schema"`) from the
/// 422s of the registry and the job folder, which depend on configuration and files: a
/// request the OpenAPI document calls valid never gets this one (`.ci/schemathesis`).
fn schema_refusal(errors: Vec<FieldError>) -> ApiError {
    ApiError::invalid(ErrorSource::Request, errors)
        .with_extension("check", Value::String("schema".into()))
}

fn replay(
    job: &JobRecord,
    request_sha256: &str,
    public_url: &str,
) -> Result<(StatusCode, Json<TriggerAccepted>), ApiError> {
    if job.request_sha256 == request_sha256 {
        Ok(accepted(job, public_url))
    } else {
        Err(conflict(job))
    }
}

fn accepted(job: &JobRecord, public_url: &str) -> (StatusCode, Json<TriggerAccepted>) {
    (
        StatusCode::ACCEPTED,
        Json(TriggerAccepted {
            job_id: job.job_id,
            status: job.state,
            status_url: format!("{public_url}/jobs/{}", job.job_id),
        }),
    )
}

fn conflict(job: &JobRecord) -> ApiError {
    ApiError::conflict(
        format!(
            "job {} was already triggered with a different body",
            job.job_id
        ),
        job.state,
    )
}

/// The agents live nodes of the fleet offer, when this node does not offer `agent` itself
/// (empty otherwise: no query).
async fn offered_elsewhere(
    app: &super::Inner,
    agent: &AgentName,
) -> Result<BTreeSet<AgentName>, ApiError> {
    if app.config.agents.get(agent).is_some() {
        return Ok(BTreeSet::new());
    }
    let since = Timestamp::now().minus(app.config.store.lease);
    let nodes = app.store.nodes(since).await?;
    Ok(nodes.into_iter().flat_map(|n| n.agents).collect())
}

/// The request against the configuration: agent registry (this node's, then what the fleet's
/// live nodes offer), job names, callback origins, params.
fn check_registry(
    config: &Config,
    egress: &Transport,
    request: &TriggerRequest,
    offered: &BTreeSet<AgentName>,
) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    match config.agents.get(&request.agent_name) {
        // Another node runs it; its params are checked against the schema there is none of here.
        None if offered.contains(&request.agent_name) => {}
        None => {
            let registry = config.agents.snapshot();
            let mut known: BTreeSet<&str> = registry.keys().map(|a| a.as_str()).collect();
            known.extend(offered.iter().map(AgentName::as_str));
            errors.push(FieldError::new(
                "/agent_name",
                format!(
                    "no live node offers agent {:?}; offered agents: {}",
                    request.agent_name.as_str(),
                    known.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        Some(agent) => {
            if let Some(params_schema) = &agent.params_schema {
                let params = Value::Object(request.params.clone().unwrap_or_default());
                if let Err(errs) = schema::check(params_schema, &params) {
                    errors.extend(
                        errs.into_iter()
                            .map(|e| FieldError::new(format!("/params{}", e.pointer), e.detail)),
                    );
                }
            }
        }
    }
    if !config.jobs.allowed_job_names.contains(&request.job_name) {
        errors.push(FieldError::new(
            "/job_name",
            format!(
                "{:?} is not in jobs.allowed_job_names",
                request.job_name.as_str()
            ),
        ));
    }
    let urls = &request.callback_urls;
    for (pointer, url) in [
        ("/callback_urls/progress", &urls.progress),
        ("/callback_urls/completion", &urls.completion),
    ] {
        if !egress.allows(url) {
            errors.push(FieldError::new(
                pointer,
                format!(
                    "origin {} is not in callbacks.allowed_origins",
                    url.origin().ascii_serialization()
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(ErrorSource::Request, errors))
    }
}

/// The most of `input/manifest.json` read; a larger manifest is refused.
const MANIFEST_MAX: u64 = 16 << 20;

/// The job folder and its manifest: present, valid for its schema version, and agreeing with
/// the request.
fn check_manifest(
    shared_root: &std::path::Path,
    modes: crate::jobdir::Modes,
    request: &TriggerRequest,
) -> Result<(JobDir, Manifest), ApiError> {
    let manifest_error = |detail: String| {
        ApiError::invalid(ErrorSource::Manifest, vec![FieldError::new("", detail)])
    };
    let id = request.job_id.to_string();
    // Say where it was looked for: a wrong shared_root on either side is the usual cause.
    let looked = shared_root.join(&id).join("input/manifest.json");
    let dir = JobDir::open(shared_root, request.job_id, modes).map_err(|e| match e {
        // The id is case-insensitive; its folder has one name, the lower-case id.
        JobDirError::Missing(path) if path == id => {
            let detail = format!(
                "no job folder {id} in shared_root (a job folder is named by the job id in lower case; looked for {})",
                looked.display()
            );
            ApiError::invalid(ErrorSource::Request, vec![FieldError::new("/job_id", detail)])
        }
        e @ JobDirError::Missing(_) => {
            manifest_error(format!("{e} (looked for {})", looked.display()))
        }
        e => manifest_error(e.to_string()),
    })?;
    let bytes = dir
        .read("input/manifest.json", MANIFEST_MAX)
        .map_err(|e| manifest_error(format!("cannot read input/manifest.json: {e}")))?
        .ok_or_else(|| {
            manifest_error(format!(
                "input/manifest.json does not exist (looked for {})",
                looked.display()
            ))
        })?;
    let manifest =
        parse_manifest(&bytes).map_err(|e| ApiError::invalid(ErrorSource::Manifest, e.errors))?;
    let contradictions = contradictions(&manifest, request);
    if contradictions.is_empty() {
        Ok((dir, manifest))
    } else {
        Err(ApiError::invalid(ErrorSource::Manifest, contradictions))
    }
}

/// A v2 manifest's files, hashed on the blocking pool: the job is accepted only if Rails and
/// the sidecar see the same bytes.
async fn check_input_files(
    app: &super::Inner,
    dir: JobDir,
    manifest: Manifest,
) -> Result<(), ApiError> {
    let Inputs::Files(files) = manifest.inputs else {
        return Ok(());
    };
    if files.is_empty() {
        return Ok(());
    }
    let hashes = app.input_hashes.clone();
    let max = app.config.server.max_input_bytes;
    let errors = tokio::task::spawn_blocking(move || dir.check_inputs(&files, &hashes, max))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(ErrorSource::Manifest, errors))
    }
}

fn contradictions(manifest: &Manifest, request: &TriggerRequest) -> Vec<FieldError> {
    let pairs: [(&str, String, String); 4] = [
        (
            "job_id",
            manifest.job_id.to_string(),
            request.job_id.to_string(),
        ),
        ("user_id", manifest.user_id.clone(), request.user_id.clone()),
        (
            "agent_name",
            manifest.agent_name.to_string(),
            request.agent_name.to_string(),
        ),
        (
            "job_name",
            manifest.job_name.to_string(),
            request.job_name.to_string(),
        ),
    ];
    pairs
        .into_iter()
        .filter(|(_, m, r)| m != r)
        .map(|(field, m, r)| {
            FieldError::new(
                format!("/{field}"),
                format!("manifest says {m:?} but the request says {r:?}"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_bodies_in_any_key_order_hash_the_same() {
        let a = br#"{"job_id":"7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f","user_id":"1","agent_name":"a","job_name":"J","callback_urls":{"progress":"http://x/p","completion":"http://x/c"}}"#;
        let b = br#"{"user_id":"1","job_id":"7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f","job_name":"J","agent_name":"a","callback_urls":{"completion":"http://x/c","progress":"http://x/p"}}"#;
        assert_eq!(parse_request(a).unwrap().1, parse_request(b).unwrap().1);
    }

    #[test]
    fn a_job_id_that_is_not_a_uuid_is_named() {
        let body = br#"{"job_id":"nope","user_id":"1","agent_name":"a","job_name":"J","callback_urls":{"progress":"http://x/p","completion":"http://x/c"}}"#;
        let err = parse_request(body).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
