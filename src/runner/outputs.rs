//! Finalising `output/`: summary.json, metrics.json, error.log and the artifact index.
//!
//! Runs on the blocking pool (it hashes files). Every file is written atomically, so a reader
//! never sees half a summary.

use std::io;
use std::path::Path;

use serde_json::{Map, Value};

use crate::contract::{
    AgentName, Artifact, JobError, JobId, JobState, MetricsFile, PAYLOAD_VERSION, RejectedArtifact,
    Summary, Timing,
};
use crate::jobdir::{sha256_file, write_atomic};

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

/// Writes the output files; returns the final state (a `completed` run whose agent summary says
/// `partial` becomes `partial`) and the summary.
pub fn finalize(output: &Path, report: RunReport) -> io::Result<(JobState, Summary)> {
    let agent_summary = read_object(&output.join("summary.json"));
    let state = match (
        report.state,
        agent_summary.get("status").and_then(Value::as_str),
    ) {
        (JobState::Completed, Some("partial")) => JobState::Partial,
        (state, _) => state,
    };
    let (artifacts, rejected_artifacts) = index_artifacts(output)?;
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
    write_atomic(&output.join("summary.json"), &pretty(&summary))?;
    write_metrics(output, &report)?;
    match &report.error {
        Some(error) => write_error_log(output, error, &report.stderr_tail)?,
        // One from an earlier attempt (or a sweeper that lost a race) must not outlive it.
        None => match std::fs::remove_file(output.join("error.log")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        },
    }
    Ok((state, summary))
}

fn pretty<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The agent's own JSON object at `path`; empty when absent or not an object.
fn read_object(path: &Path) -> Map<String, Value> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|v| match v {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .unwrap_or_default()
}

fn write_metrics(output: &Path, report: &RunReport) -> io::Result<()> {
    let mut agent = read_object(&output.join("metrics.json"));
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
    write_atomic(&output.join("metrics.json"), &pretty(&metrics))
}

fn write_error_log(output: &Path, error: &JobError, tail: &[String]) -> io::Result<()> {
    let mut text = format!("reason: {}\n{}\n", reason_text(error), error.message);
    if !tail.is_empty() {
        text.push_str("\nlast stderr lines:\n");
        for line in tail {
            text.push_str(line);
            text.push('\n');
        }
    }
    write_atomic(&output.join("error.log"), text.as_bytes())
}

fn reason_text(error: &JobError) -> String {
    serde_json::to_value(error.reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Indexes every regular file under `output/artifacts/`; symlinks and special files are listed
/// as rejected and never opened.
pub fn index_artifacts(output: &Path) -> io::Result<(Vec<Artifact>, Vec<RejectedArtifact>)> {
    let mut artifacts = Vec::new();
    let mut rejected = Vec::new();
    let root = output.join("artifacts");
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let rel = path
                .strip_prefix(output)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            // file_type() does not follow symlinks.
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                rejected.push(RejectedArtifact {
                    path: rel,
                    reason: "symlink (not followed)".into(),
                });
            } else if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                artifacts.push(describe(&path, rel)?);
            } else {
                rejected.push(RejectedArtifact {
                    path: rel,
                    reason: "not a regular file".into(),
                });
            }
        }
    }
    artifacts.sort_by(|a, b| a.path.cmp(&b.path));
    rejected.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((artifacts, rejected))
}

fn describe(path: &Path, rel: String) -> io::Result<Artifact> {
    let (bytes, sha256) = sha256_file(path)?;
    let mime = mime_guess::from_path(path)
        .first_or_octet_stream()
        .essence_str()
        .to_owned();
    Ok(Artifact {
        path: rel,
        mime,
        bytes,
        sha256,
    })
}

/// The `output_index` of a completion: the summary itself, or a pointer when it is too large.
pub fn output_index(summary: &Summary, output_uri: &str, max_bytes: usize) -> Value {
    let full = serde_json::to_value(summary).unwrap_or(Value::Null);
    let size = serde_json::to_vec(&full).map(|b| b.len()).unwrap_or(0);
    if size <= max_bytes {
        return full;
    }
    serde_json::json!({
        "truncated": true,
        "summary_uri": format!("{output_uri}summary.json"),
        "job_id": summary.job_id,
        "status": summary.status,
        "artifact_count": summary.artifacts.len(),
        "summary_bytes": size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Timestamp;

    #[test]
    fn a_symlink_in_artifacts_is_rejected_not_indexed() {
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(out.path().join("artifacts/nested")).unwrap();
        std::fs::write(out.path().join("artifacts/nested/report.csv"), "a,b\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", out.path().join("artifacts/passwd")).unwrap();
        let (artifacts, rejected) = index_artifacts(out.path()).unwrap();
        assert_eq!(artifacts.len(), 1);
        assert_eq!(artifacts[0].path, "artifacts/nested/report.csv");
        assert_eq!(artifacts[0].mime, "text/csv");
        assert_eq!(artifacts[0].bytes, 4);
        assert_eq!(rejected[0].path, "artifacts/passwd");
    }

    #[test]
    fn a_completed_run_removes_an_error_log_left_by_an_earlier_writer() {
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("error.log"), "queue_timeout\n").unwrap();
        let report = RunReport {
            job_id: "7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f".parse().unwrap(),
            agent_name: "a".parse().unwrap(),
            state: JobState::Completed,
            error: None,
            timing: Timing {
                queued_at: Timestamp::now(),
                started_at: Some(Timestamp::now()),
                finished_at: Timestamp::now(),
                duration_ms: 1,
            },
            measured: Measured::default(),
            stderr_tail: Vec::new(),
        };
        let (state, _) = finalize(out.path(), report).unwrap();
        assert_eq!(state, JobState::Completed);
        assert!(!out.path().join("error.log").exists());
        assert!(out.path().join("summary.json").exists());
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
        let index = output_index(&summary, "file:///o/", 100);
        assert_eq!(index["truncated"], true);
        assert_eq!(index["summary_uri"], "file:///o/summary.json");
        assert_eq!(
            output_index(&summary, "file:///o/", 10_000)["findings"],
            summary.findings.clone().unwrap()
        );
    }
}
