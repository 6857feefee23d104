//! Running agents end to end: callbacks, outputs on disk, failures, timeouts, bounded memory.

use serde_json::{Value, json};

use crate::helpers::*;

const EXAMPLE_JOB: &str = "7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f";

fn read_json(path: std::path::PathBuf) -> Value {
    serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn the_example_job_runs_end_to_end_with_signed_ordered_callbacks_and_valid_outputs() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    copy_dir(
        &repo()
            .join("shared_root.example")
            .join(EXAMPLE_JOB)
            .join("input"),
        &sidecar.job_dir(EXAMPLE_JOB).join("input"),
    );
    let manifest = read_json(sidecar.job_dir(EXAMPLE_JOB).join("input/manifest.json"));
    let mut body = trigger(&receiver, "summarizer_v2");
    body["job_id"] = json!(EXAMPLE_JOB);
    body["params"] = manifest["params"].clone();
    let (status, _) = sidecar.post_trigger(&body).await;
    assert_eq!(status, 202);
    let completion = receiver.completion(EXAMPLE_JOB).await;

    // Every callback is signed, bound to its body, and valid for its schema.
    let progress = receiver.hits("/progress");
    assert!(
        progress.len() >= 2,
        "expected progress callbacks, got {}",
        progress.len()
    );
    for hit in progress.iter().chain([&completion]) {
        let claims = verifier()
            .verify_callback(hit.authorization.as_deref(), &hit.body)
            .expect("JWT verifies");
        assert_eq!(claims.sub, EXAMPLE_JOB);
        assert_eq!(claims.job_name, "ReportCompileJob");
    }
    for hit in &progress {
        assert_valid("progress-callback.json", &hit.json());
        assert_all_properties("progress-callback.json", &hit.json());
        assert_eq!(hit.json()["job_name"], "ReportCompileJob");
    }
    let seqs: Vec<u64> = progress
        .iter()
        .map(|h| h.json()["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "progress in order: {seqs:?}"
    );
    assert_eq!(progress.last().unwrap().json()["message"], "Finished");

    // Exactly one completion, carrying job_name, with a verifiable sig.
    assert_eq!(receiver.hits("/completion").len(), 1);
    let c = completion.json();
    assert_valid("completion-callback.json", &c);
    assert_eq!(
        (c["status"].as_str(), c["job_name"].as_str()),
        (Some("completed"), Some("ReportCompileJob"))
    );
    let claims = verifier()
        .verify_callback(completion.authorization.as_deref(), &completion.body)
        .unwrap();
    assert_eq!(completion.headers["idempotency-key"], claims.jti.as_str());
    assert_eq!(completion.headers["webhook-id"], claims.jti.as_str());
    assert_eq!(
        verifier()
            .verify_sig(c["sig"].as_str().unwrap())
            .unwrap()
            .status,
        "completed"
    );

    // Outputs on disk validate, and output_index is the final summary.
    let output = sidecar.job_dir(EXAMPLE_JOB).join("output");
    let summary = read_json(output.join("summary.json"));
    assert_valid("summary.json", &summary);
    assert_valid("metrics.json", &read_json(output.join("metrics.json")));
    // ... with each artifact's url added, where the API serves it.
    let mut index = c["output_index"].clone();
    for artifact in index["artifacts"].as_array_mut().unwrap() {
        let url = artifact.as_object_mut().unwrap().remove("url").unwrap();
        let path = artifact["path"].as_str().unwrap();
        assert_eq!(url, format!("{}/jobs/{EXAMPLE_JOB}/{path}", sidecar.base));
    }
    assert_eq!(index, summary);
    let artifacts: Vec<&str> = summary["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        artifacts,
        ["artifacts/findings.json", "artifacts/summary.csv"]
    );
    assert_eq!(summary["findings"].as_array().unwrap().len(), 3);
    let metrics = read_json(output.join("metrics.json"));
    assert_eq!(
        metrics["files_summarised"], 3,
        "the agent's own KPIs are kept"
    );
    assert_eq!(metrics["exit_code"], 0);
    assert!(metrics["max_rss_kb"].as_u64().unwrap() > 0);
    let log = std::fs::read_to_string(output.join("log.txt")).unwrap();
    assert!(log.contains("[stderr] summarizer: job"), "{log}");
    assert!(!output.join("error.log").exists());

    // GET /jobs/{id} tells the same story.
    let (_, status) = sidecar.get(&format!("/jobs/{EXAMPLE_JOB}")).await;
    assert_valid("status.json", &status);
    assert_eq!(
        states(&status),
        ["received", "queued", "in_progress", "completed"]
    );
    assert_eq!(status["output_index"], c["output_index"]);
    assert_eq!(status["last_progress"]["message"], "Finished");
}

#[tokio::test]
async fn a_failing_agent_ends_failed_with_its_exit_code_and_an_error_log() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let body = trigger(&receiver, "failing_agent");
    let c = run_job(&sidecar, &receiver, &body).await.json();
    assert_eq!(c["status"], "failed");
    assert_eq!(c["error"]["reason"], "exit_code");
    assert_eq!(c["error"]["exit_code"], 3);
    assert_valid("completion-callback.json", &c);
    let error_log = std::fs::read_to_string(
        sidecar
            .job_dir(body["job_id"].as_str().unwrap())
            .join("output/error.log"),
    )
    .unwrap();
    assert!(
        error_log.contains("agent exited with code 3"),
        "{error_log}"
    );
    assert!(
        error_log.contains("failing: giving up"),
        "last stderr lines are kept: {error_log}"
    );
}

#[tokio::test]
async fn an_agent_past_its_timeout_ends_timed_out_and_its_whole_process_group_is_killed() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let body = trigger(&receiver, "with_child");
    let c = run_job(&sidecar, &receiver, &body).await.json();
    assert_eq!(c["status"], "timed_out");
    assert_eq!(c["error"]["reason"], "timeout");
    let pids = receiver
        .hits("/progress")
        .iter()
        .find(|h| h.json()["stage"] == "pids")
        .map(|h| h.json()["message"].as_str().unwrap().to_owned())
        .expect("the agent reported its pids");
    for pid in pids.split(' ').map(|p| p.parse::<u32>().unwrap()) {
        assert!(!alive(pid), "pid {pid} survived the timeout");
    }
    let log = std::fs::read_to_string(
        sidecar
            .job_dir(body["job_id"].as_str().unwrap())
            .join("output/log.txt"),
    )
    .unwrap();
    assert!(
        log.contains("SIGKILL"),
        "the agent ignored SIGTERM, so SIGKILL followed: {log}"
    );
}

#[tokio::test]
async fn an_agent_printing_200_mb_to_stdout_finishes_with_the_sidecar_memory_bounded() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let mut body = trigger(&receiver, "chatty");
    body["params"] = json!({"mb": 200});
    let c = run_job(&sidecar, &receiver, &body).await.json();
    assert_eq!(c["status"], "completed");
    let metrics = read_json(
        sidecar
            .job_dir(body["job_id"].as_str().unwrap())
            .join("output/metrics.json"),
    );
    assert!(
        metrics["stdout_bytes"].as_u64().unwrap() > 200 * 1024 * 1024,
        "{metrics}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", sidecar.pid())).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    assert!(
        peak_kb < 100 * 1024,
        "sidecar peak RSS {peak_kb} kB while the agent printed 205 MB"
    );
    let last = receiver.hits("/progress").last().unwrap().json();
    assert_eq!(
        last["message"], "last line",
        "the newest event is the one delivered last"
    );
}

#[tokio::test]
async fn a_symlink_in_artifacts_is_not_indexed() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let body = trigger(&receiver, "symlinker");
    let c = run_job(&sidecar, &receiver, &body).await.json();
    let index = &c["output_index"];
    let paths: Vec<&str> = index["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["artifacts/report.txt"]);
    assert_eq!(index["rejected_artifacts"][0]["path"], "artifacts/passwd");
    assert!(
        !c.to_string().contains("root:x:0:0"),
        "nothing of /etc/passwd leaks"
    );
}

#[tokio::test]
async fn the_agent_gets_the_contract_environment_and_nothing_secret() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let mut body = trigger(&receiver, "env_dump");
    body["params"] = json!({"depth": 2});
    let c = run_job(&sidecar, &receiver, &body).await.json();
    assert_eq!(c["status"], "partial", "the agent's summary said partial");
    let job_dir = sidecar
        .job_dir(body["job_id"].as_str().unwrap())
        .canonicalize()
        .unwrap();
    let dump = read_json(job_dir.join("output/artifacts/env.json"));
    let env = &dump["env"];
    assert_eq!(dump["cwd"], job_dir.display().to_string());
    assert_eq!(env["AGENT_JOB_ID"], body["job_id"]);
    assert_eq!(
        env["AGENT_INPUT_DIR"],
        job_dir.join("input").display().to_string()
    );
    assert_eq!(
        env["AGENT_OUTPUT_DIR"],
        job_dir.join("output").display().to_string()
    );
    assert_eq!(
        env["AGENT_MANIFEST"],
        job_dir.join("input/manifest.json").display().to_string()
    );
    assert_eq!(
        serde_json::from_str::<Value>(env["AGENT_PARAMS"].as_str().unwrap()).unwrap(),
        json!({"depth": 2})
    );
    assert_eq!(env["AGENT_TRACE_ID"].as_str().unwrap().len(), 32);
    assert_eq!(env["AGENT_EXTRA"], "from-config");
    assert!(
        !dump.to_string().contains(SECRET),
        "the JWT secret must not reach the agent"
    );
    assert!(
        env.get("AGENT_SIDECAR_LOG_FORMAT").is_none(),
        "the sidecar's own environment is not inherited"
    );
    let last = receiver.hits("/progress").last().unwrap().json();
    assert_eq!(last["message"], "plain line, not json");
}

#[tokio::test]
async fn a_job_running_when_the_sidecar_crashes_ends_failed_on_restart_when_its_agent_says_fail() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let mut body = trigger(&receiver, "napper_no_retry");
    body["params"] = json!({"seconds": 0.5});
    sidecar.write_job(&body);
    let (status, _) = sidecar.post_trigger(&body).await;
    assert_eq!(status, 202);
    receiver
        .wait_until("the agent to start", |hits| {
            hits.iter().any(|h| h.path == "/progress")
        })
        .await;
    let sidecar = sidecar.crash_and_restart();
    let c = receiver
        .completion(body["job_id"].as_str().unwrap())
        .await
        .json();
    assert_eq!(c["status"], "failed");
    assert_eq!(c["error"]["reason"], "sidecar_restarted");
    let (_, job) = sidecar
        .get(&format!("/jobs/{}", body["job_id"].as_str().unwrap()))
        .await;
    assert_eq!(job["state"], "failed");
}

#[tokio::test]
async fn a_receiver_answering_500_changes_nothing_about_the_job_and_the_completion_is_retried() {
    let receiver = Receiver::answering(axum::http::StatusCode::INTERNAL_SERVER_ERROR).await;
    let sidecar = Sidecar::start(&receiver).await;
    let body = trigger(&receiver, "failing_agent");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    let first = run_job(&sidecar, &receiver, &body).await;
    let hits = receiver
        .wait_until("a retried completion", |hits| {
            hits.iter().filter(|h| h.path == "/completion").count() >= 2
        })
        .await;
    let completions: Vec<_> = hits.iter().filter(|h| h.path == "/completion").collect();
    let jti = |h: &Hit| {
        verifier()
            .verify_callback(h.authorization.as_deref(), &h.body)
            .unwrap()
            .jti
    };
    assert_eq!(
        jti(completions[0]),
        jti(completions[1]),
        "the delivery id is stable across retries"
    );
    assert_eq!(
        completions[0].body, first.body,
        "the body is byte-identical across retries"
    );
    let (_, job) = sidecar.get(&format!("/jobs/{job_id}")).await;
    assert_eq!(
        job["state"], "failed",
        "the job's own state is untouched: {job}"
    );
    assert!(job["delivery"]["attempts"].as_u64().unwrap() >= 1, "{job}");
    assert_eq!(job["delivery"]["last_status_code"], 500, "{job}");
    assert_ne!(job["delivery"]["state"], "delivered", "{job}");
}

/// Triggers `n` overlap jobs of `agent` sharing `dir`, lets them go once `limit` of them run at
/// once, and returns the most runs any of them saw at once.
async fn most_at_once(
    sidecar: &Sidecar,
    receiver: &Receiver,
    (agent, limit): (&str, usize),
    n: usize,
    dir: &std::path::Path,
) -> usize {
    let mut ids = Vec::new();
    for _ in 0..n {
        let mut body = trigger(receiver, agent);
        body["params"] = json!({"dir": dir.display().to_string()});
        sidecar.write_job(&body);
        assert_eq!(sidecar.post_trigger(&body).await.0, 202);
        ids.push(body["job_id"].as_str().unwrap().to_owned());
    }
    // The limit is reached (a scheduler running one job at a time never gets here)...
    eventually(&format!("{limit} runs at once"), || async {
        let running = std::fs::read_dir(dir.join("running")).ok()?.count();
        (running >= limit).then_some(())
    })
    .await;
    // ...and the runs hold until every job was claimable, so a scheduler over the limit shows.
    std::fs::write(dir.join("release"), "").unwrap();
    for id in &ids {
        assert_eq!(receiver.completion(id).await.json()["status"], "completed");
    }
    ids.iter()
        .map(|id| {
            std::fs::read_to_string(dir.join(format!("seen-{id}")))
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .max()
        .unwrap()
}

#[tokio::test]
async fn an_agent_never_runs_more_than_its_max_concurrent_at_once() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let dir = tempfile::tempdir().unwrap();
    let most = most_at_once(&sidecar, &receiver, ("overlap", 2), 6, dir.path()).await;
    assert_eq!(most, 2, "runs at once, limit 2");
}

#[tokio::test]
async fn all_agents_together_never_exceed_the_global_max_concurrent() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(&receiver, &[("JOBS__MAX_CONCURRENT", "3")]).await;
    let dir = tempfile::tempdir().unwrap();
    let most = most_at_once(&sidecar, &receiver, ("overlap_wide", 3), 8, dir.path()).await;
    assert_eq!(most, 3, "runs at once, global limit 3");
}
