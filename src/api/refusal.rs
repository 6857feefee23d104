//! Refused triggers, seen from the sidecar's side: one warn line and one count each, whether
//! the trigger handler or the auth middleware in front of it refused the request.

use axum::http::StatusCode;

use crate::error::{ApiError, ErrorSource, source_name};
use crate::telemetry::{self, RefusedReason};

/// One warn line and one count per refused trigger, so a misconfigured Rails (a wrong origin,
/// an unknown job_name) shows on the sidecar's side. The line names the status, the reason and
/// each failing pointer with its reason; never a credential, and never what a `params` value
/// was (a schema's message quotes the value, so those reasons are left out).
pub(super) fn record(e: &ApiError) {
    let reason = refusal_reason(e);
    telemetry::trigger_refused(reason);
    let reason = reason.as_str();
    let problem = e.problem();
    let fields: Vec<String> = problem
        .errors
        .iter()
        .map(|f| {
            if f.pointer.starts_with("/params") {
                format!(
                    "{} {}: invalid (value not logged)",
                    source_name(f.source),
                    f.pointer
                )
            } else {
                format!("{} {}: {}", source_name(f.source), f.pointer, f.detail)
            }
        })
        .collect();
    // Field problems repeat their fields in `detail`; only the others are logged whole.
    let detail = if fields.is_empty() {
        problem.detail.as_str()
    } else {
        problem.title
    };
    tracing::warn!(
        status = problem.status,
        reason,
        errors = ?fields,
        "trigger refused ({reason}): {detail}"
    );
}

/// The `reason` label of a refusal (a request's fields are the schema's).
fn refusal_reason(e: &ApiError) -> RefusedReason {
    let problem = e.problem();
    match e.status() {
        StatusCode::BAD_REQUEST => RefusedReason::MalformedJson,
        StatusCode::UNAUTHORIZED => RefusedReason::Unauthorized,
        StatusCode::FORBIDDEN => RefusedReason::Forbidden,
        StatusCode::CONFLICT => RefusedReason::Conflict,
        StatusCode::PAYLOAD_TOO_LARGE => RefusedReason::TooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => RefusedReason::UnsupportedMediaType,
        StatusCode::SERVICE_UNAVAILABLE => RefusedReason::Unavailable,
        StatusCode::UNPROCESSABLE_ENTITY => match problem.errors.first() {
            Some(f) if f.source == ErrorSource::Manifest => RefusedReason::Manifest,
            Some(f) => RefusedReason::of_field(f.pointer.split('/').nth(1).unwrap_or_default()),
            None => RefusedReason::Request,
        },
        s if s.is_server_error() => RefusedReason::Internal,
        _ => RefusedReason::UnreadableBody,
    }
}
