//! What the platform team sees: health, readiness and Prometheus metrics.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::*;

pub(crate) async fn scrape(sidecar: &Sidecar) -> Vec<Sample> {
    let response = client()
        .get(format!("{}/metrics", sidecar.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    parse_metrics(&response.text().await.unwrap())
}

#[tokio::test]
async fn health_is_200_and_ready_lists_passing_checks() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let (status, health) = sidecar.get("/health").await;
    assert_eq!(
        (status.as_u16(), health["status"].as_str()),
        (200, Some("ok"))
    );
    let (status, ready) = sidecar.get("/ready").await;
    assert_eq!(status, 200, "{ready}");
    let names: Vec<&str> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["store", "shared_root", "agent_commands", "not_draining"]
    );
}

/// Makes `dir` refuse writes, even to root (who ignores permission bits).
pub(crate) struct ReadOnly<'a>(&'a Path);

impl<'a> ReadOnly<'a> {
    pub(crate) fn new(dir: &'a Path) -> Self {
        let ok = if nix_is_root() {
            Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .status()
                .unwrap()
                .success()
        } else {
            Command::new("chmod")
                .arg("0555")
                .arg(dir)
                .status()
                .unwrap()
                .success()
        };
        assert!(ok, "cannot make {} read-only", dir.display());
        Self(dir)
    }
}

impl Drop for ReadOnly<'_> {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(self.0).status();
        let _ = Command::new("chmod").arg("0755").arg(self.0).status();
    }
}

fn nix_is_root() -> bool {
    String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
        .unwrap()
        .trim()
        == "0"
}

#[tokio::test]
async fn ready_is_503_naming_shared_root_when_it_is_read_only_and_200_again_after() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    {
        let _guard = ReadOnly::new(&sidecar.shared_root);
        let response = client()
            .get(format!("{}/ready", sidecar.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
        let problem: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        let failing: Vec<&str> = problem["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["ok"] == false)
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(failing, ["shared_root"], "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains("shared_root"));
        // The metric alerts read says the same.
        assert_eq!(
            value(&scrape(&sidecar).await, "agent_sidecar_ready", &[]),
            0.0
        );
    }
    assert_eq!(
        value(&scrape(&sidecar).await, "agent_sidecar_ready", &[]),
        1.0
    );
    assert_eq!(sidecar.get("/ready").await.0, 200);
}

#[tokio::test]
async fn ready_is_503_while_draining() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(&receiver, &[("JOBS__DRAIN_TIMEOUT", "30s")]).await;
    let job_id = start_job(&sidecar, &receiver, "napper", json!({"seconds": 2})).await;
    eventually("the job to run", || async {
        let (_, job) = sidecar.get(&format!("/jobs/{job_id}")).await;
        (job["state"] == "in_progress").then_some(())
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &sidecar.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let problem = eventually("/ready to say draining", || async {
        let (status, problem) = sidecar.get("/ready").await;
        (status == 503).then_some(problem)
    })
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("not_draining"),
        "{problem}"
    );
}

#[tokio::test]
async fn after_a_run_of_mixed_jobs_the_metrics_counters_match_what_happened() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(start_job(&sidecar, &receiver, "ticker", json!({"count": 2})).await);
    }
    ids.push(start_job(&sidecar, &receiver, "failing_agent", json!({})).await);
    ids.push(start_job(&sidecar, &receiver, "silent", json!({})).await);
    let canceled = start_job(&sidecar, &receiver, "napper", json!({})).await;
    eventually("the napper to run", || async {
        let (_, job) = sidecar.get(&format!("/jobs/{canceled}")).await;
        (job["state"] == "in_progress").then_some(())
    })
    .await;
    let (status, _) = sidecar
        .post_raw(&format!("/jobs/{canceled}/cancel"), Vec::new())
        .await;
    assert_eq!(status, 202);
    ids.push(canceled);
    for id in &ids {
        receiver.completion(id).await;
    }
    let m = eventually("every completion to be counted", || async {
        let m = scrape(&sidecar).await;
        let delivered = value(
            &m,
            "agent_sidecar_callbacks_total",
            &[("kind", "completion"), ("outcome", "delivered")],
        );
        (delivered == 5.0).then_some(m)
    })
    .await;
    let jobs = |agent: &str, status: &str| {
        value(
            &m,
            "agent_sidecar_jobs_total",
            &[("agent", agent), ("status", status)],
        )
    };
    assert_eq!(jobs("ticker", "completed"), 2.0);
    assert_eq!(jobs("failing_agent", "failed"), 1.0);
    assert_eq!(jobs("silent", "timed_out"), 1.0);
    assert_eq!(jobs("napper", "canceled"), 1.0);
    let running: f64 = m
        .iter()
        .filter(|s| s.name == "agent_sidecar_jobs_running")
        .map(|s| s.value)
        .sum();
    assert_eq!(running, 0.0);
    assert_eq!(
        value(
            &m,
            "agent_sidecar_sweeper_actions_total",
            &[("action", "stale")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "agent_sidecar_job_duration_seconds_count",
            &[("agent", "ticker")]
        ),
        2.0
    );
    assert_eq!(
        value(&m, "agent_sidecar_queue_wait_seconds_count", &[]),
        5.0
    );
    assert_eq!(
        value(&m, "agent_sidecar_queue_depth", &[("agent", "ticker")]),
        0.0
    );
    assert_eq!(value(&m, "agent_sidecar_callback_dead_letters", &[]), 0.0);
    assert!(
        value(
            &m,
            "agent_sidecar_callback_latency_seconds_count",
            &[("kind", "completion")]
        ) >= 5.0
    );
    // ticker's progress was delivered (the other outcomes are published at 0; lines printed
    // while a store write is in flight coalesce, so not every line becomes a callback).
    assert!(
        value(
            &m,
            "agent_sidecar_callbacks_total",
            &[("kind", "progress"), ("outcome", "delivered")]
        ) > 0.0
    );
    assert!(value(&m, "agent_sidecar_worker_heartbeat_timestamp_seconds", &[]) > 1.7e9);
    assert_eq!(value(&m, "agent_sidecar_build_info", &[]), 1.0);
}

#[tokio::test]
async fn queue_depth_counts_the_jobs_waiting_for_an_agent() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let blocker = start_job(&sidecar, &receiver, "lane", json!({})).await;
    eventually("the blocker to run", || async {
        let (_, job) = sidecar.get(&format!("/jobs/{blocker}")).await;
        (job["state"] == "in_progress").then_some(())
    })
    .await;
    let before = std::time::Instant::now();
    for _ in 0..3 {
        start_job(&sidecar, &receiver, "lane", json!({"seconds": 0})).await;
    }
    let m = scrape(&sidecar).await;
    assert_eq!(
        value(&m, "agent_sidecar_queue_depth", &[("agent", "lane")]),
        3.0
    );
    // The oldest waiting job's age, as alerts/autoscalers read it: at most the time since the
    // first of the three was triggered, and 0 for an agent with nothing waiting.
    let age = value(
        &m,
        "agent_sidecar_queue_oldest_age_seconds",
        &[("agent", "lane")],
    );
    assert!(age <= before.elapsed().as_secs_f64() + 0.01, "{age}");
    assert_eq!(
        value(
            &m,
            "agent_sidecar_queue_oldest_age_seconds",
            &[("agent", "ticker")]
        ),
        0.0
    );
    assert_eq!(value(&m, "agent_sidecar_ready", &[]), 1.0);
    assert_eq!(
        value(&m, "agent_sidecar_jobs_running", &[("agent", "lane")]),
        1.0
    );
    let (status, _) = sidecar
        .post_raw(&format!("/jobs/{blocker}/cancel"), Vec::new())
        .await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn a_traceparent_on_the_trigger_reaches_the_agent_and_every_callback() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = trigger(&receiver, "env_dump");
    sidecar.write_job(&body);
    let response = client()
        .post(format!("{}/agents/trigger", sidecar.base))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let job_id = body["job_id"].as_str().unwrap();
    let completion = receiver.completion(job_id).await;
    assert_eq!(completion.json()["meta"]["trace_id"], trace);
    let dump: Value = serde_json::from_slice(
        &std::fs::read(sidecar.job_dir(job_id).join("output/artifacts/env.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dump["env"]["AGENT_TRACE_ID"], trace);
    let agent_parent = dump["env"]["TRACEPARENT"].as_str().unwrap();
    assert!(
        agent_parent.starts_with(&format!("00-{trace}-")),
        "{agent_parent}"
    );
    let progress = receiver.hits("/progress");
    assert!(!progress.is_empty());
    for hit in progress.iter().chain([&completion]) {
        let header = hit.headers["traceparent"].to_str().unwrap();
        assert!(header.starts_with(&format!("00-{trace}-")), "{header}");
        assert_eq!(header.len(), 55);
    }
}

#[tokio::test]
async fn a_full_run_logs_json_lines_with_the_job_fields_and_never_a_secret_or_a_param_value() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let sentinel = "param-sentinel-7f3a9c";
    let mut ids = Vec::new();
    for agent in ["env_dump", "failing_agent", "ticker"] {
        ids.push(start_job(&sidecar, &receiver, agent, json!({"api_key": sentinel})).await);
    }
    for id in &ids {
        receiver.completion(id).await;
    }
    // Quiet once every completion is recorded as delivered.
    eventually("the deliveries to be recorded", || async {
        let delivered = metric(
            &sidecar,
            "agent_sidecar_callbacks_total",
            &[("kind", "completion"), ("outcome", "delivered")],
        )
        .await;
        (delivered == 3.0).then_some(())
    })
    .await;
    let log = sidecar.log();
    assert!(
        !log.contains(SECRET),
        "the JWT secret never reaches the log"
    );
    assert!(!log.contains(sentinel), "param values never reach the log");
    let mut about_jobs = 0;
    for line in log.lines() {
        let entry: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        let Some(id) = ids.iter().find(|id| line.contains(id.as_str())) else {
            continue;
        };
        about_jobs += 1;
        let fields = if entry["span"]["job_id"].is_string() {
            &entry["span"]
        } else {
            &entry
        };
        assert_eq!(fields["job_id"], id.as_str(), "{line}");
        for key in ["job_name", "agent_name", "trace_id"] {
            assert!(fields[key].is_string(), "{key} missing: {line}");
        }
    }
    assert!(about_jobs >= 9, "{about_jobs} lines about the jobs");
}

#[tokio::test]
async fn jobs_show_prints_every_state_change_and_delivery_attempt() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let job_id = start_job(&sidecar, &receiver, "ticker", json!({"count": 1})).await;
    receiver.completion(&job_id).await;
    let shown = eventually("the attempt to be recorded", || async {
        let out = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
            .args(["jobs", "show", &job_id, "--url", &sidecar.base])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
        (shown["delivery"]["state"] == "delivered").then_some(shown)
    })
    .await;
    assert_eq!(
        states(&shown),
        ["received", "queued", "in_progress", "completed"]
    );
    assert_eq!(shown["delivery"]["history"][0]["status_code"], 200);
    let out = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args([
            "jobs",
            "show",
            &uuid::Uuid::new_v4().to_string(),
            "--url",
            &sidecar.base,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no job"), "{stderr}");
}

#[tokio::test]
async fn the_served_openapi_document_is_the_committed_one() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let (status, served) = sidecar.get("/openapi.json").await;
    assert_eq!(status, 200);
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(served, committed);
    assert_eq!(served["openapi"], "3.1.0");
}

#[tokio::test]
async fn every_metric_family_is_published_zeroed_from_the_start() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let m = scrape(&sidecar).await;
    let zero = |name: &str, labels: &[(&str, &str)]| {
        let found = m.iter().find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        });
        assert_eq!(found.map(|s| s.value), Some(0.0), "{name} {labels:?}");
    };
    for status in ["completed", "partial", "failed", "canceled", "timed_out"] {
        zero(
            "agent_sidecar_jobs_total",
            &[("agent", "ticker"), ("status", status)],
        );
    }
    zero("agent_sidecar_jobs_running", &[("agent", "ticker")]);
    zero(
        "agent_sidecar_job_duration_seconds_count",
        &[("agent", "ticker")],
    );
    zero("agent_sidecar_queue_wait_seconds_count", &[]);
    for source in ["cache", "read"] {
        zero("agent_sidecar_input_hashes_total", &[("source", source)]);
    }
    for outcome in ["delivered", "retry", "dead"] {
        zero(
            "agent_sidecar_callbacks_total",
            &[("kind", "completion"), ("outcome", outcome)],
        );
    }
    for outcome in ["delivered", "retry", "dropped", "refused"] {
        zero(
            "agent_sidecar_callbacks_total",
            &[("kind", "progress"), ("outcome", outcome)],
        );
    }
    zero(
        "agent_sidecar_callback_latency_seconds_count",
        &[("kind", "completion")],
    );
    let reasons = agent_sidecar::telemetry::RefusedReason::ALL;
    for reason in reasons {
        zero(
            "agent_sidecar_triggers_refused_total",
            &[("reason", reason.as_str())],
        );
    }
    let published = m
        .iter()
        .filter(|s| s.name == "agent_sidecar_triggers_refused_total")
        .count();
    assert_eq!(
        published,
        reasons.len(),
        "one series per reason, nothing else"
    );
    for reason in ["unauthorized", "job_name", "params", "malformed_json"] {
        zero(
            "agent_sidecar_triggers_refused_total",
            &[("reason", reason)],
        );
    }
}
