//! `GET /jobs/{job_id}/artifacts/{path}` and `GET /jobs/{job_id}/output/{name}`: a job's files
//! over HTTP, for a caller that does not mount `shared_root`.
//!
//! Every file is opened through the job's [`JobDir`] like any other the sidecar reads out of a
//! job folder: beneath it, no symlink on the way, a regular file with one link, never blocking
//! on a FIFO. The `ETag` is the file's SHA-256: the one the completion's `output_index` named
//! for an artifact still of that size, else hashed from the open file. `Range` (one range;
//! several are answered with the whole file, as RFC 9110 allows), `If-Range` and
//! `If-None-Match` are honoured. A caller whose token is scoped to some agents sees only their
//! jobs: any other job is answered 404, as if it did not exist.

use std::io::SeekFrom;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::AppState;
use super::auth::Principal;
use crate::contract::{FieldError, JobId};
use crate::error::{ApiError, ErrorSource};
use crate::jobdir::{JobDir, JobDirError, Modes, sha256_of_first};
use crate::store::JobRecord;

/// The files of `output/` served by name: the sidecar's own and the agent's log.
const OUTPUT_FILES: [(&str, &str); 4] = [
    ("summary.json", "application/json"),
    ("metrics.json", "application/json"),
    ("log.txt", "text/plain; charset=utf-8"),
    ("error.log", "text/plain; charset=utf-8"),
];

/// The longest artifact path taken, and the longest name in it (Linux's `PATH_MAX`, `NAME_MAX`).
const PATH_MAX: usize = 4096;
const NAME_MAX: usize = 255;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs/{job_id}/artifacts/{*path}", get(artifact))
        .route("/jobs/{job_id}/output/{name}", get(output_file))
}

/// A file under the job's `output/artifacts/`, as its completion's `output_index` links it.
#[utoipa::path(get, path = "/jobs/{job_id}/artifacts/{path}", tag = "jobs",
    params(
        ("job_id" = crate::contract::JobId, Path, description = "The job's UUID"),
        ("path" = String, Path, description = "Relative to `output/artifacts/` (`/`-separated; no `.` or `..`)"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-9`"),
        ("If-None-Match" = Option<String>, Header, description = "ETags (the file's SHA-256, quoted) the caller holds"),
        ("If-Range" = Option<String>, Header, description = "The Range applies only while the ETag is this one"),
    ),
    responses(
        (status = 200, description = "The file; `ETag` is its SHA-256", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("ETag" = String, description = "The SHA-256 of the file, quoted"), ("Accept-Ranges" = String))),
        (status = 206, description = "The requested range (`Content-Range`)", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("ETag" = String), ("Content-Range" = String))),
        (status = 304, description = "The caller's `If-None-Match` holds this version", headers(("ETag" = String))),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 404, description = "No such job (or not one of the caller's agents), or no such file", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 416, description = "The range is outside the file (`Content-Range: bytes */<size>`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "The path is not plain, or leads through a symlink to a FIFO, device or hard link (named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(crate) async fn artifact(
    State(app): State<AppState>,
    Path((job_id, path)): Path<(String, String)>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Response {
    let served = async {
        let job = visible_job(&app, &job_id, principal).await?;
        let path = plain_path(&path)?;
        let content_type = mime_guess::from_path(path)
            .first_or_octet_stream()
            .essence_str()
            .to_owned();
        let wanted = Wanted {
            rel: format!("output/artifacts/{path}"),
            pointer: "/path",
            indexed: indexed(&job, &format!("artifacts/{path}")),
        };
        Ok::<_, ApiError>((open(&app, job.job_id, wanted).await?, content_type))
    };
    match served.await {
        Ok((file, content_type)) => respond(file, &content_type, &headers).await,
        Err(e) => e.into_response(),
    }
}

/// One of the files the sidecar keeps in `output/`: `summary.json`, `metrics.json`, `log.txt`
/// (the agent's stderr) or `error.log`.
#[utoipa::path(get, path = "/jobs/{job_id}/output/{name}", tag = "jobs",
    params(
        ("job_id" = crate::contract::JobId, Path, description = "The job's UUID"),
        ("name" = String, Path, description = "`summary.json`, `metrics.json`, `log.txt` or `error.log`"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-9`"),
        ("If-None-Match" = Option<String>, Header, description = "ETags (the file's SHA-256, quoted) the caller holds"),
        ("If-Range" = Option<String>, Header, description = "The Range applies only while the ETag is this one"),
    ),
    responses(
        (status = 200, description = "The file; `ETag` is its SHA-256", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("ETag" = String, description = "The SHA-256 of the file, quoted"), ("Accept-Ranges" = String))),
        (status = 206, description = "The requested range (`Content-Range`)", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("ETag" = String), ("Content-Range" = String))),
        (status = 304, description = "The caller's `If-None-Match` holds this version", headers(("ETag" = String))),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 404, description = "No such job (or not one of the caller's agents), no such file, or a name not served", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 416, description = "The range is outside the file (`Content-Range: bytes */<size>`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "The file is a symlink, FIFO, device or hard link (named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(crate) async fn output_file(
    State(app): State<AppState>,
    Path((job_id, name)): Path<(String, String)>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Response {
    let served = async {
        let job = visible_job(&app, &job_id, principal).await?;
        let Some((name, content_type)) = OUTPUT_FILES.into_iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = OUTPUT_FILES.iter().map(|(n, _)| *n).collect();
            return Err(ApiError::not_found(format!(
                "output/{name} is not served here (only {}; artifacts are under /jobs/{{job_id}}/artifacts/)",
                names.join(", ")
            )));
        };
        let wanted = Wanted {
            rel: format!("output/{name}"),
            pointer: "/name",
            indexed: None,
        };
        Ok::<_, ApiError>((open(&app, job.job_id, wanted).await?, content_type))
    };
    match served.await {
        Ok((file, content_type)) => respond(file, content_type, &headers).await,
        Err(e) => e.into_response(),
    }
}

/// The job, if it exists and the caller may see it (a token scoped to agents sees theirs).
async fn visible_job(
    app: &AppState,
    job_id: &str,
    principal: Option<Extension<Principal>>,
) -> Result<JobRecord, ApiError> {
    let job_id = super::jobs::parse_job_id(job_id)?;
    let scoped_out = |job: &JobRecord| {
        principal
            .as_ref()
            .and_then(|p| p.agents.as_ref())
            .is_some_and(|agents| !agents.contains(&job.agent_name))
    };
    match app.inner.store.job(job_id).await? {
        Some(job) if !scoped_out(&job) => Ok(job),
        _ => Err(ApiError::not_found(format!("no job {job_id}"))),
    }
}

/// `path` if it is plain: `/`-separated names, none empty, `.`, `..` or too long.
fn plain_path(path: &str) -> Result<&str, ApiError> {
    let plain = !path.is_empty()
        && path.len() <= PATH_MAX
        && path.split('/').all(|name| {
            !name.is_empty()
                && name != "."
                && name != ".."
                && name.len() <= NAME_MAX
                && !name.contains('\0')
        });
    if plain {
        Ok(path)
    } else {
        let detail = format!("{path:?} is not a plain relative path under output/artifacts/");
        Err(ApiError::invalid(
            ErrorSource::Path,
            vec![FieldError::new("/path", detail)],
        ))
    }
}

/// The size and SHA-256 the job's `output_index` lists for `path` (relative to `output/`).
fn indexed(job: &JobRecord, path: &str) -> Option<(u64, String)> {
    let artifacts = job.output_index.as_ref()?.get("artifacts")?.as_array()?;
    let entry = artifacts.iter().find(|a| a["path"] == path)?;
    Some((
        entry["bytes"].as_u64()?,
        entry["sha256"].as_str()?.to_owned(),
    ))
}

/// What to open: the path under the job folder, the parameter that named it, and what the
/// completion said of it.
struct Wanted {
    rel: String,
    pointer: &'static str,
    indexed: Option<(u64, String)>,
}

/// An opened file with its size and SHA-256.
struct Opened {
    file: std::fs::File,
    len: u64,
    sha256: String,
}

/// Opens and, unless the index already says, hashes the file on the blocking pool.
async fn open(app: &AppState, job_id: JobId, wanted: Wanted) -> Result<Opened, ApiError> {
    let root = app.inner.shared_root.clone();
    let modes = app.inner.config.storage.modes;
    let pointer = wanted.pointer;
    let shown = wanted.rel.trim_start_matches("output/").to_owned();
    tokio::task::spawn_blocking(move || open_blocking(root, job_id, modes, wanted))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| match e {
            JobDirError::Missing(_) => ApiError::not_found(format!("{shown} does not exist")),
            e if e.is_refusal() => ApiError::invalid(
                ErrorSource::Path,
                vec![FieldError::new(pointer, e.to_string())],
            ),
            e => ApiError::internal(&e),
        })
}

fn open_blocking(
    root: PathBuf,
    job_id: JobId,
    modes: Modes,
    wanted: Wanted,
) -> Result<Opened, JobDirError> {
    let dir = JobDir::folder(&root, &job_id.to_string(), modes)?;
    let (file, len) = dir.open_to_serve(&wanted.rel)?;
    let sha256 = match wanted.indexed {
        Some((bytes, sha256)) if bytes == len => sha256,
        _ => sha256_of_first(&file, len).map_err(|source| JobDirError::Io {
            path: wanted.rel.clone(),
            source,
        })?,
    };
    Ok(Opened { file, len, sha256 })
}

/// The answer for an opened file: 304, 416, 206 with one range, or 200 with all of it, the
/// body streamed from the open descriptor.
async fn respond(opened: Opened, content_type: &str, request: &HeaderMap) -> Response {
    let etag = format!("\"{}\"", opened.sha256);
    let mut headers = HeaderMap::new();
    let mut set = |name, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(header::ETAG, &etag);
    set(header::ACCEPT_RANGES, "bytes");
    set(header::CACHE_CONTROL, "private, no-cache");
    // Agent output shown in a browser runs no script in the API's origin and is not sniffed.
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::CONTENT_SECURITY_POLICY, "sandbox");
    if none_match(request, &etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let len = opened.len;
    let (status, start, count) = match wanted_range(request, &etag, len) {
        Ok(Some(range)) => {
            set(
                header::CONTENT_RANGE,
                &format!("bytes {}-{}/{len}", range.start(), range.end()),
            );
            let count = range.end() - range.start() + 1;
            (StatusCode::PARTIAL_CONTENT, *range.start(), count)
        }
        Ok(None) => (StatusCode::OK, 0, len),
        Err(detail) => {
            set(header::CONTENT_RANGE, &format!("bytes */{len}"));
            let mut response = ApiError::range_not_satisfiable(detail).into_response();
            response.headers_mut().extend(headers);
            return response;
        }
    };
    set(header::CONTENT_TYPE, content_type);
    set(header::CONTENT_LENGTH, &count.to_string());
    let mut file = tokio::fs::File::from_std(opened.file);
    if let Err(e) = file.seek(SeekFrom::Start(start)).await {
        return ApiError::internal(&e).into_response();
    }
    let body = Body::from_stream(ReaderStream::new(file.take(count)));
    (status, headers, body).into_response()
}

/// Whether `If-None-Match` names `etag` (weak comparison, RFC 9110 §13.1.2) or is `*`.
fn none_match(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// The one range to send: `None` for the whole file (no `Range`, an `If-Range` for another
/// version, a `Range` not understood or of several ranges); `Err` when it cannot be satisfied.
fn wanted_range(
    request: &HeaderMap,
    etag: &str,
    len: u64,
) -> Result<Option<RangeInclusive<u64>>, String> {
    use http_range_header::RangeUnsatisfiableError as Unsatisfiable;
    let Some(range) = request.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    // A strong comparison: a weak tag or a date never matches, so the whole file is sent.
    let stale = request
        .get(header::IF_RANGE)
        .is_some_and(|v| v.to_str().map_or(true, |v| v.trim() != etag));
    if stale {
        return Ok(None);
    }
    let refused =
        |e: Unsatisfiable| format!("Range {range:?} cannot be served from {len} bytes: {e}");
    match http_range_header::parse_range_header(range).map(|r| r.validate(len)) {
        Ok(Ok(ranges)) => match ranges.as_slice() {
            [one] => Ok(Some(one.clone())),
            _ => Ok(None),
        },
        Ok(Err(e)) | Err(e @ (Unsatisfiable::Rejected(_) | Unsatisfiable::Unsatisfiable)) => {
            Err(refused(e))
        }
        // A Range not understood may be ignored (RFC 9110 §14.2).
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    #[test]
    fn only_plain_paths_are_taken() {
        for path in ["a.txt", "sub/a.txt", "..a", "a..b/c"] {
            assert!(plain_path(path).is_ok(), "{path}");
        }
        for path in ["", "../x", "a/../b", "./a", "a//b", "/a", "a/", "a\0b"] {
            assert!(plain_path(path).is_err(), "{path:?}");
        }
    }

    #[test]
    fn ranges_are_one_range_or_the_whole_file() {
        let etag = "\"abc\"";
        let range = |v: &str| wanted_range(&headers(&[(header::RANGE, v)]), etag, 100);
        assert_eq!(range("bytes=0-9"), Ok(Some(0..=9)));
        assert_eq!(range("bytes=-10"), Ok(Some(90..=99)));
        assert_eq!(range("bytes=0-1,5-6"), Ok(None));
        assert_eq!(range("pages=1"), Ok(None));
        assert!(range("bytes=100-").is_err());
        let elsewhere = headers(&[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, "\"old\"")]);
        assert_eq!(wanted_range(&elsewhere, etag, 100), Ok(None));
        let same = headers(&[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, etag)]);
        assert_eq!(wanted_range(&same, etag, 100), Ok(Some(0..=9)));
    }

    #[test]
    fn if_none_match_compares_weakly_and_takes_a_star() {
        let matches = |v: &str| none_match(&headers(&[(header::IF_NONE_MATCH, v)]), "\"abc\"");
        assert!(matches("\"abc\""));
        assert!(matches("\"x\", W/\"abc\""));
        assert!(matches("*"));
        assert!(!matches("\"abd\""));
    }
}
