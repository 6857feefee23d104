//! Errors at the HTTP edge, rendered once as RFC 9457 `application/problem+json`.
//!
//! Library modules return their own `thiserror` enums; handlers map them into [`ApiError`] here.
//! `anyhow` is used only in `main` and in task bodies whose errors are only logged. 5xx answers
//! are opaque: the cause is logged once, the client learns only that it was our fault.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use crate::contract::FieldError;

/// Which document a field error points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorSource {
    /// The request body.
    Request,
    /// `input/manifest.json` of the job.
    Manifest,
    /// A path parameter.
    Path,
    /// A query string parameter.
    Query,
    /// A request header (the pointer names it).
    Header,
}

/// One failing field of a problem.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProblemField {
    /// Which document `pointer` points into.
    pub source: ErrorSource,
    /// JSON pointer to the value.
    pub pointer: String,
    /// What is wrong with it.
    pub detail: String,
}

/// An error answer of the API.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    errors: Vec<ProblemField>,
    extensions: Box<serde_json::Map<String, Value>>,
    retry_after_secs: Option<u32>,
}

/// An RFC 9457 problem document (`application/problem+json`): every error answer of the API.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:agent-sidecar:problem:<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short, fixed per type.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// Each failing field, when fields failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProblemField>,
    /// Extension members: `state` (409), `reason` (401), `checks` (503 from `/ready`),
    /// `check: "schema"` (a 422 for a trigger body that breaks the trigger schema itself).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extensions: serde_json::Map<String, Value>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            extensions: Box::default(),
            retry_after_secs: None,
        }
    }

    /// A `Range` the resource cannot satisfy (the handler adds `Content-Range: bytes */len`).
    pub fn range_not_satisfiable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range-not-satisfiable",
            "Range not satisfiable",
            detail,
        )
    }

    /// The sidecar is shutting down and takes no new work; try again (another instance, or
    /// this one once restarted) after `retry_after_secs`.
    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u32) -> Self {
        let mut err = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        );
        err.retry_after_secs = Some(retry_after_secs);
        err
    }

    /// The request is not what this endpoint takes (e.g. not a WebSocket upgrade).
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    /// The body is not JSON.
    pub fn malformed_json(e: &serde_json::Error) -> Self {
        let mut err = Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            "the request body is not valid JSON",
        );
        err.errors.push(ProblemField {
            source: ErrorSource::Request,
            pointer: String::new(),
            detail: format!("{e}"),
        });
        err
    }

    /// One or more fields are invalid.
    pub fn invalid(source: ErrorSource, errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!(
                "{} {}: {}",
                source_name(source),
                pointer_name(&one.pointer),
                one.detail
            ),
            many => format!("{} has {} invalid fields", source_name(source), many.len()),
        };
        let mut err = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Validation failed",
            detail,
        );
        err.errors = errors
            .into_iter()
            .map(|e| ProblemField {
                source,
                pointer: e.pointer,
                detail: e.detail,
            })
            .collect();
        err
    }

    /// The resource is in a state that forbids the request; `state` says which.
    pub fn conflict(detail: impl Into<String>, state: impl std::fmt::Display) -> Self {
        let mut err = Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail);
        err.extensions
            .insert("state".into(), Value::String(state.to_string()));
        err
    }

    /// Adds a member to the problem document.
    pub fn with_extension(mut self, name: &str, value: Value) -> Self {
        self.extensions.insert(name.to_owned(), value);
        self
    }

    /// The caller did not prove who it is; `detail` says why (never the credential).
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    /// The caller is known but may not do this.
    pub fn forbidden(source: ErrorSource, field: FieldError) -> Self {
        let mut err = Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            format!(
                "{} {}: {}",
                source_name(source),
                pointer_name(&field.pointer),
                field.detail
            ),
        );
        err.errors.push(ProblemField {
            source,
            pointer: field.pointer,
            detail: field.detail,
        });
        err
    }

    /// No such resource.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// The request could not be read (too large, not a regular file...).
    pub fn unreadable_body(status: StatusCode, detail: impl Into<String>) -> Self {
        let (slug, title) = if status == StatusCode::PAYLOAD_TOO_LARGE {
            ("payload-too-large", "Payload too large")
        } else {
            ("unreadable-body", "Unreadable body")
        };
        Self::new(status, slug, title, detail)
    }

    /// The body is over the configured limit; the problem names the setting and its value.
    pub fn too_large(limit_bytes: usize) -> Self {
        let detail =
            format!("the request body is larger than server.max_body_bytes ({limit_bytes} bytes)");
        let mut err = Self::unreadable_body(StatusCode::PAYLOAD_TOO_LARGE, detail);
        err.errors.push(ProblemField {
            source: ErrorSource::Request,
            pointer: String::new(),
            detail: format!("at most max_body_bytes = {limit_bytes} bytes are read"),
        });
        err
    }

    /// The body is not of the one media type the endpoint takes.
    pub fn unsupported_media_type(expected: &str, got: Option<&str>) -> Self {
        let got = got.map_or_else(|| "no Content-Type".to_owned(), |g| format!("{g:?}"));
        let detail = format!("must be {expected}, got {got}");
        let mut err = Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!("header /Content-Type: {detail}"),
        );
        err.errors.push(ProblemField {
            source: ErrorSource::Header,
            pointer: "/Content-Type".into(),
            detail,
        });
        err
    }

    /// Our fault. The cause is logged here, once, and not shown to the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the sidecar failed to handle the request; it has been logged",
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The readable sentence.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// How a document is named in a sentence (`request`, `manifest`...).
pub(crate) fn source_name(source: ErrorSource) -> &'static str {
    match source {
        ErrorSource::Request => "request",
        ErrorSource::Manifest => "manifest",
        ErrorSource::Path => "path",
        ErrorSource::Query => "query",
        ErrorSource::Header => "header",
    }
}

fn pointer_name(pointer: &str) -> &str {
    if pointer.is_empty() {
        "(document)"
    } else {
        pointer
    }
}

impl ApiError {
    /// The problem document this error is answered with.
    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("urn:agent-sidecar:problem:{}", self.slug),
            title: self.title,
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            errors: self.errors.clone(),
            extensions: (*self.extensions).clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    /// A database that cannot be reached or written (PostgreSQL down, a read-only or full
    /// disk, a lock held too long) is a retryable 503: Rails retries it, where a 500 pages
    /// someone. Anything else is our fault.
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        let unavailable = match &e {
            StoreError::Pool(_)
            | StoreError::Postgres(_)
            | StoreError::Closed
            // SQLite's writer commits a group of writes; a failed COMMIT is a disk that
            // refused them, not a bad request.
            | StoreError::Commit(_) => true,
            StoreError::Database(db) => sqlite_unavailable(db),
            StoreError::Migration(_)
            | StoreError::PgMigration(_)
            | StoreError::Corrupt { .. }
            | StoreError::Stale { .. } => false,
        };
        if unavailable {
            tracing::warn!(error = %e, "store unavailable");
            Self::unavailable("the job store is unavailable; retry shortly", 5)
        } else {
            Self::internal(&e)
        }
    }
}

/// Whether SQLite failed because of the file or the disk under it rather than the statement.
fn sqlite_unavailable(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    let rusqlite::Error::SqliteFailure(failure, _) = e else {
        return false;
    };
    matches!(
        failure.code,
        ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::ReadOnly
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::PermissionDenied
            | ErrorCode::OutOfMemory
    )
}
