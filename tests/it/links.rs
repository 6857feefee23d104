//! Issue 18: nothing under a job folder is followed through a link. Each attack is planted
//! before the trigger (by "another process on the mount", the test) or during the run (by the
//! agent, `tests/agents/planter.py`); each test checks that nothing outside the job folder
//! changed, that nothing from outside reached an output file or the completion, and that the
//! job ended with the reason naming the link.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::helpers::*;

/// What the outside files hold; it must never show up in an output or a callback.
const SECRET: &str = "SECRET-FROM-OUTSIDE";

/// Files outside `shared_root` (beside it, on the same filesystem so hard links work), and a
/// byte-for-byte snapshot of them taken before the attack.
struct Outside {
    dir: PathBuf,
    before: Vec<(PathBuf, Vec<u8>)>,
}

impl Outside {
    fn new(sidecar: &Sidecar) -> Self {
        let dir = sidecar.dir.path().join("outside");
        std::fs::create_dir_all(dir.join("loot")).unwrap();
        std::fs::write(dir.join("sentinel.txt"), format!("{SECRET} sentinel\n")).unwrap();
        let secret = json!({"status": "partial", "findings": SECRET, "secret_kpi": SECRET});
        std::fs::write(dir.join("secret.json"), secret.to_string()).unwrap();
        std::fs::write(dir.join("loot/loot.txt"), SECRET).unwrap();
        let before = snapshot(&dir);
        Self { dir, before }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn assert_unchanged(&self) {
        assert_eq!(
            snapshot(&self.dir),
            self.before,
            "the outside files changed"
        );
    }
}

/// Every file under `dir` with its bytes, sorted (links are not followed).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                pending.push(path);
            } else {
                files.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// Asserts the job ended `failed` with `why` in its completion, its status and (when
/// `output/` is a real folder) its error.log, and that nothing from outside was read into
/// the completion, summary.json or metrics.json.
async fn assert_refused(sidecar: &Sidecar, receiver: &Receiver, job_id: &str, why: &str) {
    let hit = receiver.completion(job_id).await;
    let completion = hit.json();
    assert_eq!(completion["status"], "failed", "{completion}");
    assert_eq!(
        completion["error"]["reason"], "spawn_failed",
        "{completion}"
    );
    let message = completion["error"]["message"].as_str().unwrap();
    assert!(message.contains(why), "{message}");
    assert!(!String::from_utf8_lossy(&hit.body).contains(SECRET));
    let status = wait_state(sidecar, job_id, "failed").await;
    assert!(
        status["error"]["message"].as_str().unwrap().contains(why),
        "{status}"
    );
    let output = sidecar.job_dir(job_id).join("output");
    if std::fs::symlink_metadata(&output).is_ok_and(|m| m.is_dir()) {
        let error_log = std::fs::read_to_string(output.join("error.log")).unwrap();
        assert!(error_log.contains(why), "{error_log}");
        for name in ["summary.json", "metrics.json"] {
            let text = std::fs::read_to_string(output.join(name)).unwrap_or_default();
            assert!(!text.contains(SECRET), "{name}: {text}");
        }
    }
}

/// Writes a summarizer job's folder, lets `plant` change its `output/`, then triggers it.
async fn planted_before(plant: impl FnOnce(&Path, &Outside), why: &str) {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let outside = Outside::new(&sidecar);
    let body = trigger(&receiver, "summarizer_v2");
    let job_dir = sidecar.write_job(&body);
    std::fs::create_dir_all(job_dir.join("output/artifacts")).unwrap();
    plant(&job_dir.join("output"), &outside);
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, 202, "{answer}");
    assert_refused(&sidecar, &receiver, body["job_id"].as_str().unwrap(), why).await;
    outside.assert_unchanged();
}

fn symlink_to(target: &str, name: &'static str) -> impl FnOnce(&Path, &Outside) {
    let target = target.to_owned();
    move |output, outside| {
        let _ = std::fs::remove_dir(output.join(name));
        std::os::unix::fs::symlink(outside.path(&target), output.join(name)).unwrap();
    }
}

fn hard_link_to(target: &'static str, name: &'static str) -> impl FnOnce(&Path, &Outside) {
    move |output, outside| std::fs::hard_link(outside.path(target), output.join(name)).unwrap()
}

#[tokio::test]
async fn a_log_txt_symlink_planted_before_the_trigger_fails_the_job_and_is_never_written() {
    let why = "output/log.txt is a symlink; the sidecar never follows links in a job folder";
    planted_before(symlink_to("sentinel.txt", "log.txt"), why).await;
}

#[tokio::test]
async fn an_events_jsonl_symlink_planted_before_the_trigger_fails_the_job() {
    planted_before(
        symlink_to("sentinel.txt", "events.jsonl"),
        "output/events.jsonl is a symlink",
    )
    .await;
}

#[tokio::test]
async fn a_summary_json_symlink_planted_before_the_trigger_is_not_read() {
    planted_before(
        symlink_to("secret.json", "summary.json"),
        "output/summary.json is a symlink",
    )
    .await;
}

#[tokio::test]
async fn a_metrics_json_symlink_planted_before_the_trigger_is_not_read() {
    planted_before(
        symlink_to("secret.json", "metrics.json"),
        "output/metrics.json is a symlink",
    )
    .await;
}

#[tokio::test]
async fn a_symlinked_artifacts_folder_planted_before_the_trigger_is_not_listed() {
    planted_before(
        symlink_to("loot", "artifacts"),
        "output/artifacts is a symlink",
    )
    .await;
}

#[tokio::test]
async fn a_hard_linked_log_txt_planted_before_the_trigger_is_never_appended_to() {
    planted_before(
        hard_link_to("sentinel.txt", "log.txt"),
        "output/log.txt is a hard link",
    )
    .await;
}

#[tokio::test]
async fn a_hard_linked_summary_json_planted_before_the_trigger_is_not_read() {
    planted_before(
        hard_link_to("secret.json", "summary.json"),
        "output/summary.json is a hard link",
    )
    .await;
}

#[tokio::test]
async fn a_fifo_named_summary_json_fails_the_job_without_blocking_the_sidecar() {
    let mkfifo = |output: &Path, _: &Outside| {
        let made = std::process::Command::new("mkfifo")
            .arg(output.join("summary.json"))
            .status()
            .unwrap();
        assert!(made.success());
    };
    planted_before(mkfifo, "output/summary.json is not a regular file").await;
}

#[tokio::test]
async fn a_symlinked_output_folder_is_refused_at_the_trigger_and_nothing_is_written_outside() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let outside = Outside::new(&sidecar);
    let body = trigger(&receiver, "summarizer_v2");
    let job_dir = sidecar.write_job(&body);
    std::os::unix::fs::symlink(outside.path("loot"), job_dir.join("output")).unwrap();
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, 422, "{answer}");
    let detail = answer["errors"][0]["detail"].as_str().unwrap();
    assert!(
        detail.ends_with("/output is a symlink; the sidecar never follows links in a job folder"),
        "{detail}"
    );
    outside.assert_unchanged();
}

/// Runs the planter agent, which swaps `output/<plant>` for a link to `target` while it runs.
async fn planted_during(plant: &str, target: &str, how: &str, why: &str) {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let outside = Outside::new(&sidecar);
    let mut body = trigger(&receiver, "planter");
    body["params"] = json!({"plant": plant, "target": outside.path(target), "how": how});
    sidecar.write_job(&body);
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, 202, "{answer}");
    let job_id = body["job_id"].as_str().unwrap();
    assert_refused(&sidecar, &receiver, job_id, why).await;
    outside.assert_unchanged();
    let listed: Vec<Value> = receiver.completion(job_id).await.json()["output_index"]["artifacts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn a_log_txt_swapped_for_a_symlink_during_the_run_is_not_followed() {
    planted_during(
        "log.txt",
        "sentinel.txt",
        "symlink",
        "output/log.txt is a symlink",
    )
    .await;
}

#[tokio::test]
async fn a_log_txt_swapped_for_a_hard_link_during_the_run_is_not_appended_to() {
    planted_during(
        "log.txt",
        "sentinel.txt",
        "hardlink",
        "output/log.txt is a hard link",
    )
    .await;
}

#[tokio::test]
async fn an_events_jsonl_swapped_for_a_symlink_during_the_run_is_not_appended_to() {
    planted_during(
        "events.jsonl",
        "sentinel.txt",
        "symlink",
        "output/events.jsonl is a symlink",
    )
    .await;
}

#[tokio::test]
async fn a_summary_json_symlink_left_by_the_agent_is_not_read() {
    planted_during(
        "summary.json",
        "secret.json",
        "symlink",
        "output/summary.json is a symlink",
    )
    .await;
}

#[tokio::test]
async fn a_metrics_json_symlink_left_by_the_agent_is_not_read() {
    planted_during(
        "metrics.json",
        "secret.json",
        "symlink",
        "output/metrics.json is a symlink",
    )
    .await;
}

#[tokio::test]
async fn an_artifacts_folder_swapped_for_a_symlink_during_the_run_is_not_listed() {
    planted_during(
        "artifacts",
        "loot",
        "symlink",
        "output/artifacts is a symlink",
    )
    .await;
}

#[tokio::test]
async fn an_output_folder_swapped_for_a_symlink_during_the_run_gets_nothing_written_through_it() {
    planted_during("output", "loot", "symlink", "output is a symlink").await;
}
