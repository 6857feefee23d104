//! Finalising `output/`: summary.json, metrics.json, error.log and the artifact index.
//!
//! Runs on the blocking pool (it hashes files). Every file is written atomically, so a reader
//! never sees half a summary.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::config::InlineArtifacts;
use crate::contract::{
    AgentName, Artifact, ErrorReason, JobError, JobId, JobState, MetricsFile, PAYLOAD_VERSION,
    RejectedArtifact, Summary, Timing,
};
use crate::jobdir::{EntryKind, JobDir, JobDirError};

/// The most of the agent's summary.json or metrics.json read; a larger one is ignored.
const AGENT_FILE_MAX: u64 = 16 << 20;

/// Everything known about a finished attempt that goes into the output files.
pub struct RunReport {
    /// The job.
    pub job_id: JobId,
    /// The agent.
    pub agent_name: AgentName,
    /// Terminal state before the agent's own summary is consulted.
    pub state: JobState,
    /// Why it did not complete.
    pub error: Option<JobError>,
    /// Timing of the run.
    pub timing: Timing,
    /// Measured figures.
    pub measured: Measured,
    /// Last stderr lines, oldest first, for error.log.
    pub stderr_tail: Vec<String>,
    /// Which artifacts the completion carries inline.
    pub inline: InlineArtifacts,
}

/// What the sidecar measured of a run.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Exit code, if the agent exited.
    pub exit_code: Option<i32>,
    /// stdout lines parsed as progress.
    pub progress_events: u64,
    /// stdout bytes.
    pub stdout_bytes: u64,
    /// stderr bytes.
    pub stderr_bytes: u64,
    /// Peak RSS in KiB.
    pub max_rss_kb: Option<u64>,
}

/// What finalising decided: the state and error the job ends with, and its summary.
pub struct Finalized {
    /// The final state (a `completed` run whose agent summary says `partial` is `partial`).
    pub state: JobState,
    /// Why it did not complete, including a refusal of what `output/` holds.
    pub error: Option<JobError>,
    /// The summary written to summary.json.
    pub summary: Summary,
    /// Base64 of the artifacts to inline in the completion, by path (relative to `output/`).
    pub inlined: BTreeMap<String, String>,
}

/// Writes the output files. A link, hard link or FIFO where the sidecar reads or writes fails
/// the job with its sentence (never followed); `Err` when the files cannot be written at all.
pub fn finalize(dir: &JobDir, mut report: RunReport) -> Result<Finalized, JobDirError> {
    let read = dir
        .check_output()
        .and_then(|()| {
            Ok((
                read_object(dir, "summary.json")?,
                read_object(dir, "metrics.json")?,
            ))
        })
        .and_then(|agent| Ok((agent, index_artifacts(dir)?)));
    let ((agent_summary, agent_metrics), (artifacts, rejected_artifacts)) = match read {
        Ok(read) => read,
        Err(e) if e.is_refusal() => {
            (report.state, report.error) = refused(report.state, report.error, &e);
            Default::default()
        }
        Err(e) => return Err(e),
    };
    let state = match (
        report.state,
        agent_summary.get("status").and_then(Value::as_str),
    ) {
        (JobState::Completed, Some("partial")) => JobState::Partial,
        (state, _) => state,
    };
    let asked = agent_summary.get("inline_artifacts") == Some(&Value::Bool(true));
    let inlined = if report.inline.always || asked {
        read_inlined(dir, &artifacts, report.inline.under_bytes)
    } else {
        BTreeMap::new()
    };
    let summary = Summary {
        version: PAYLOAD_VERSION,
        job_id: report.job_id,
        agent_name: report.agent_name.clone(),
        status: state,
        artifacts,
        rejected_artifacts,
        findings: agent_summary.get("findings").cloned(),
        notes: agent_summary.get("notes").cloned(),
        metrics: agent_summary.get("metrics").cloned(),
        timing: report.timing.clone(),
    };
    dir.write_atomic("output/summary.json", &pretty(&summary))?;
    write_metrics(dir, &report, agent_metrics)?;
    match &report.error {
        Some(error) => write_error_log(dir, error, &report.stderr_tail)?,
        // One from an earlier attempt (or a sweeper that lost a race) must not outlive it.
        None => dir.remove("output/error.log")?,
    }
    Ok(Finalized {
        state,
        error: report.error,
        summary,
        inlined,
    })
}

/// Base64 of each artifact smaller than `under_bytes` whose bytes still have the indexed
/// SHA-256 (one changed or swapped since it was indexed is left to its URL).
fn read_inlined(
    dir: &JobDir,
    artifacts: &[Artifact],
    under_bytes: u64,
) -> BTreeMap<String, String> {
    artifacts
        .iter()
        .filter(|a| a.bytes < under_bytes)
        .filter_map(|a| {
            let bytes = dir.read(&format!("output/{}", a.path), a.bytes).ok()??;
            let same = crate::jobdir::hex(&Sha256::digest(&bytes)) == a.sha256;
            same.then(|| {
                let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
                (a.path.clone(), text)
            })
        })
        .collect()
}

/// The state and error of a job whose folder was refused: a run that would have completed
/// fails with the refusal's sentence; one that already failed keeps its reason and says both.
/// No error reason of its own: a new one is a new callback version (schemas/README.md).
pub fn refused(
    state: JobState,
    error: Option<JobError>,
    refusal: &JobDirError,
) -> (JobState, Option<JobError>) {
    let sentence = format!("job folder refused: {refusal}");
    match error {
        Some(mut error) => {
            // A run refused before it started says so once.
            if !error.message.contains(&sentence) {
                error.message = format!("{}; {sentence}", error.message);
            }
            (state, Some(error))
        }
        None => {
            let error = JobError {
                reason: ErrorReason::SpawnFailed,
                message: sentence,
                exit_code: None,
            };
            (JobState::Failed, Some(error))
        }
    }
}

fn pretty<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The agent's own JSON object in `output/<name>`; empty when absent, too large or not an
/// object. A link or FIFO there is refused.
fn read_object(dir: &JobDir, name: &str) -> Result<Map<String, Value>, JobDirError> {
    let rel = format!("output/{name}");
    let bytes = match dir.read(&rel, AGENT_FILE_MAX) {
        Ok(bytes) => bytes,
        Err(e) if e.is_refusal() => return Err(e),
        Err(e) => {
            warn!(error = %e, "the agent's {name} is ignored");
            None
        }
    };
    Ok(bytes
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|v| match v {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .unwrap_or_default())
}

fn write_metrics(
    dir: &JobDir,
    report: &RunReport,
    mut agent: Map<String, Value>,
) -> Result<(), JobDirError> {
    for key in MetricsFile::MEASURED_KEYS {
        agent.remove(key);
    }
    let m = &report.measured;
    let metrics = MetricsFile {
        version: PAYLOAD_VERSION,
        job_id: report.job_id,
        duration_ms: report.timing.duration_ms,
        exit_code: m.exit_code,
        progress_events: m.progress_events,
        stdout_bytes: m.stdout_bytes,
        stderr_bytes: m.stderr_bytes,
        max_rss_kb: m.max_rss_kb,
        agent,
    };
    dir.write_atomic("output/metrics.json", &pretty(&metrics))
}

fn write_error_log(dir: &JobDir, error: &JobError, tail: &[String]) -> Result<(), JobDirError> {
    let mut text = format!("reason: {}\n{}\n", reason_text(error), error.message);
    if !tail.is_empty() {
        text.push_str("\nlast stderr lines:\n");
        for line in tail {
            text.push_str(line);
            text.push('\n');
        }
    }
    dir.write_atomic("output/error.log", text.as_bytes())
}

fn reason_text(error: &JobError) -> String {
    serde_json::to_value(error.reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Indexes every regular file under `output/artifacts/`; symlinks, hard links and special
/// files are listed as rejected and never read. A symlinked `artifacts/` (or `output/`) is
/// refused.
pub fn index_artifacts(
    dir: &JobDir,
) -> Result<(Vec<Artifact>, Vec<RejectedArtifact>), JobDirError> {
    let mut artifacts = Vec::new();
    let mut rejected = Vec::new();
    let mut pending = vec!["output/artifacts".to_owned()];
    while let Some(folder) = pending.pop() {
        let Some(entries) = dir.list(&folder)? else {
            continue;
        };
        for (name, kind) in entries {
            let rel = format!("{folder}/{name}");
            let shown = rel.trim_start_matches("output/").to_owned();
            let reject = |reason: &str| RejectedArtifact {
                path: shown.clone(),
                reason: reason.into(),
            };
            match kind {
                EntryKind::Symlink => rejected.push(reject("symlink (not followed)")),
                EntryKind::Other => rejected.push(reject("not a regular file")),
                EntryKind::Dir => pending.push(rel),
                EntryKind::File => match describe(dir, &rel, shown.clone()) {
                    Ok(artifact) => artifacts.push(artifact),
                    Err(JobDirError::HardLink(_)) => {
                        rejected.push(reject("hard link (link count above 1; not read)"));
                    }
                    // Swapped for a link or a FIFO since it was listed.
                    Err(JobDirError::Symlink(_)) => rejected.push(reject("symlink (not followed)")),
                    Err(JobDirError::WrongType { .. }) => {
                        rejected.push(reject("not a regular file"))
                    }
                    Err(e) => return Err(e),
                },
            }
        }
    }
    artifacts.sort_by(|a, b| a.path.cmp(&b.path));
    rejected.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((artifacts, rejected))
}

fn describe(dir: &JobDir, rel: &str, shown: String) -> Result<Artifact, JobDirError> {
    let (bytes, sha256) = dir.sha256(rel)?;
    let mime = mime_guess::from_path(rel)
        .first_or_octet_stream()
        .essence_str()
        .to_owned();
    Ok(Artifact {
        path: shown,
        mime,
        bytes,
        sha256,
    })
}

/// Where a job's outputs are announced.
pub struct Announced<'a> {
    /// The job's `output_uri` (its `output/` folder).
    pub output_uri: &'a str,
    /// The API's base URL (`public_url`): each artifact's `url` is
    /// `<public_url>/jobs/<job_id>/artifacts/<path>`.
    pub public_url: &'a str,
}

/// The `output_index` of a completion: the summary with each artifact's `url` (and, for those
/// in `inlined`, its `content_base64`, as many as fit in `max_bytes`, in path order), or a
/// pointer when the summary alone is larger than `max_bytes`.
pub fn output_index(
    summary: &Summary,
    inlined: &BTreeMap<String, String>,
    at: &Announced<'_>,
    max_bytes: usize,
) -> Value {
    let mut full = serde_json::to_value(summary).unwrap_or(Value::Null);
    let artifacts = full.get_mut("artifacts").and_then(Value::as_array_mut);
    for artifact in artifacts.into_iter().flatten() {
        if let Some(url) = artifact["path"]
            .as_str()
            .and_then(|path| artifact_url(at.public_url, summary.job_id, path))
        {
            artifact["url"] = Value::String(url);
        }
    }
    let size = serde_json::to_vec(&full).map(|b| b.len()).unwrap_or(0);
    if size <= max_bytes {
        inline_within(&mut full, inlined, max_bytes - size);
        return full;
    }
    let output_uri = at.output_uri;
    serde_json::json!({
        "truncated": true,
        "summary_uri": format!("{output_uri}summary.json"),
        "job_id": summary.job_id,
        "status": summary.status,
        "artifact_count": summary.artifacts.len(),
        "summary_bytes": size,
    })
}

/// Adds `content_base64` to the artifacts of `index` that are in `inlined` while `budget`
/// bytes of JSON allow.
fn inline_within(index: &mut Value, inlined: &BTreeMap<String, String>, mut budget: usize) {
    let artifacts = index.get_mut("artifacts").and_then(Value::as_array_mut);
    for artifact in artifacts.into_iter().flatten() {
        let Some(text) = artifact["path"].as_str().and_then(|p| inlined.get(p)) else {
            continue;
        };
        // `,"content_base64":"…"`
        let cost = text.len() + 20;
        if cost <= budget {
            budget -= cost;
            artifact["content_base64"] = Value::String(text.clone());
        }
    }
}

/// `<public_url>/jobs/<job_id>/<path>`, each name of `path` percent-encoded.
fn artifact_url(public_url: &str, job_id: JobId, path: &str) -> Option<String> {
    let mut url = url::Url::parse(public_url).ok()?;
    url.path_segments_mut()
        .ok()?
        .pop_if_empty()
        .extend(["jobs", &job_id.to_string()])
        .extend(path.split('/'));
    Some(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Timestamp;
    use crate::jobdir::Modes;

    const JOB: &str = "7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f";

    /// A job folder with a manifest and an empty `output/`; the folder's path and its handle.
    fn job_dir() -> (tempfile::TempDir, std::path::PathBuf, JobDir) {
        let root = tempfile::tempdir().unwrap();
        let folder = root.path().canonicalize().unwrap().join(JOB);
        std::fs::create_dir_all(folder.join("input")).unwrap();
        std::fs::create_dir_all(folder.join("output")).unwrap();
        std::fs::write(folder.join("input/manifest.json"), "{}").unwrap();
        let dir = JobDir::open(
            folder.parent().unwrap(),
            JOB.parse().unwrap(),
            Modes::default(),
        );
        (root, folder.join("output"), dir.unwrap())
    }

    fn report(state: JobState) -> RunReport {
        RunReport {
            job_id: JOB.parse().unwrap(),
            agent_name: "a".parse().unwrap(),
            state,
            error: None,
            timing: Timing {
                queued_at: Timestamp::now(),
                started_at: Some(Timestamp::now()),
                finished_at: Timestamp::now(),
                duration_ms: 1,
            },
            measured: Measured::default(),
            stderr_tail: Vec::new(),
            inline: InlineArtifacts::default(),
        }
    }

    #[test]
    fn a_symlink_in_artifacts_is_rejected_not_indexed() {
        let (_root, out, dir) = job_dir();
        std::fs::create_dir_all(out.join("artifacts/nested")).unwrap();
        std::fs::write(out.join("artifacts/nested/report.csv"), "a,b\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", out.join("artifacts/passwd")).unwrap();
        let (artifacts, rejected) = index_artifacts(&dir).unwrap();
        assert_eq!(artifacts.len(), 1);
        assert_eq!(artifacts[0].path, "artifacts/nested/report.csv");
        assert_eq!(artifacts[0].mime, "text/csv");
        assert_eq!(artifacts[0].bytes, 4);
        assert_eq!(rejected[0].path, "artifacts/passwd");
    }

    #[test]
    fn a_hard_linked_artifact_is_rejected_not_read() {
        let (root, out, dir) = job_dir();
        let outside = root.path().join("secret.txt");
        std::fs::write(&outside, "secret").unwrap();
        std::fs::create_dir_all(out.join("artifacts")).unwrap();
        std::fs::hard_link(&outside, out.join("artifacts/copy.txt")).unwrap();
        let (artifacts, rejected) = index_artifacts(&dir).unwrap();
        assert!(artifacts.is_empty());
        assert_eq!(rejected[0].path, "artifacts/copy.txt");
        assert!(
            rejected[0].reason.contains("hard link"),
            "{}",
            rejected[0].reason
        );
    }

    #[test]
    fn a_completed_run_removes_an_error_log_left_by_an_earlier_writer() {
        let (_root, out, dir) = job_dir();
        std::fs::write(out.join("error.log"), "queue_timeout\n").unwrap();
        let done = finalize(&dir, report(JobState::Completed)).unwrap();
        assert_eq!(done.state, JobState::Completed);
        assert!(!out.join("error.log").exists());
        assert!(out.join("summary.json").exists());
    }

    #[test]
    fn a_summary_symlink_fails_the_run_and_is_replaced_not_followed() {
        let (root, out, dir) = job_dir();
        let outside = root.path().join("outside.json");
        std::fs::write(&outside, r#"{"findings":"stolen"}"#).unwrap();
        std::os::unix::fs::symlink(&outside, out.join("summary.json")).unwrap();
        let done = finalize(&dir, report(JobState::Completed)).unwrap();
        assert_eq!(done.state, JobState::Failed);
        let error = done.error.unwrap();
        assert!(
            error.message.contains("output/summary.json is a symlink"),
            "{}",
            error.message
        );
        assert_eq!(done.summary.findings, None);
        assert_eq!(
            std::fs::read_to_string(&outside).unwrap(),
            r#"{"findings":"stolen"}"#
        );
        assert!(
            !std::fs::symlink_metadata(out.join("summary.json"))
                .unwrap()
                .is_symlink()
        );
    }

    #[test]
    fn artifacts_get_encoded_urls_and_inline_bytes_only_within_the_index_limit() {
        let artifact = |path: &str| Artifact {
            path: path.into(),
            mime: "text/plain".into(),
            bytes: 3,
            sha256: "0".repeat(64),
        };
        let mut summary = Summary {
            version: 1,
            job_id: JOB.parse().unwrap(),
            agent_name: "a".parse().unwrap(),
            status: JobState::Completed,
            artifacts: vec![artifact("artifacts/a b.txt"), artifact("artifacts/c.txt")],
            rejected_artifacts: vec![],
            findings: None,
            notes: None,
            metrics: None,
            timing: report(JobState::Completed).timing,
        };
        summary.artifacts.sort_by(|a, b| a.path.cmp(&b.path));
        let at = Announced {
            output_uri: "file:///o/",
            public_url: "https://h/sidecar/",
        };
        let inlined: BTreeMap<String, String> = [
            ("artifacts/a b.txt".to_owned(), "QUJD".to_owned()),
            ("artifacts/c.txt".to_owned(), "x".repeat(200)),
        ]
        .into();
        let plain = output_index(&summary, &BTreeMap::new(), &at, 10_000);
        let size = serde_json::to_vec(&plain).unwrap().len();
        let index = output_index(&summary, &inlined, &at, size + 30);
        assert_eq!(
            index["artifacts"][0]["url"],
            format!("https://h/sidecar/jobs/{JOB}/artifacts/a%20b.txt")
        );
        assert_eq!(index["artifacts"][0]["content_base64"], "QUJD");
        assert!(
            index["artifacts"][1].get("content_base64").is_none(),
            "over the limit"
        );
        assert!(serde_json::to_vec(&index).unwrap().len() <= size + 30);
    }

    #[test]
    fn a_large_summary_is_replaced_by_a_pointer() {
        let summary = Summary {
            version: 1,
            job_id: "7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f".parse().unwrap(),
            agent_name: "a".parse().unwrap(),
            status: JobState::Completed,
            artifacts: vec![],
            rejected_artifacts: vec![],
            findings: Some(Value::String("x".repeat(1000))),
            notes: None,
            metrics: None,
            timing: Timing {
                queued_at: Timestamp::now(),
                started_at: None,
                finished_at: Timestamp::now(),
                duration_ms: 0,
            },
        };
        let at = Announced {
            output_uri: "file:///o/",
            public_url: "http://h",
        };
        let index = output_index(&summary, &BTreeMap::new(), &at, 100);
        assert_eq!(index["truncated"], true);
        assert_eq!(index["summary_uri"], "file:///o/summary.json");
        assert_eq!(
            output_index(&summary, &BTreeMap::new(), &at, 10_000)["findings"],
            summary.findings.clone().unwrap()
        );
    }
}
