//! What the platform team sees: health, readiness and Prometheus metrics.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::*;

async fn scrape(sidecar: &Sidecar) -> Vec<Sample> {
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

async fn start(sidecar: &Sidecar, receiver: &Receiver, agent: &str, params: Value) -> String {
    let mut body = trigger(receiver, agent);
    body["params"] = params;
    sidecar.write_job(&body);
    assert_eq!(sidecar.post_trigger(&body).await.0, 202);
    body["job_id"].as_str().unwrap().to_owned()
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
struct ReadOnly<'a>(&'a Path);

impl<'a> ReadOnly<'a> {
    fn new(dir: &'a Path) -> Self {
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
    }
    assert_eq!(sidecar.get("/ready").await.0, 200);
}

#[tokio::test]
async fn ready_is_503_while_draining() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(&receiver, &[("JOBS__DRAIN_TIMEOUT", "30s")]).await;
    let job_id = start(&sidecar, &receiver, "napper", json!({"seconds": 2})).await;
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
        ids.push(start(&sidecar, &receiver, "ticker", json!({"count": 2})).await);
    }
    ids.push(start(&sidecar, &receiver, "failing_agent", json!({})).await);
    ids.push(start(&sidecar, &receiver, "silent", json!({})).await);
    let canceled = start(&sidecar, &receiver, "napper", json!({})).await;
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
    assert!(value(&m, "agent_sidecar_callbacks_total", &[("kind", "progress")]) > 0.0);
    assert!(value(&m, "agent_sidecar_worker_heartbeat_timestamp_seconds", &[]) > 1.7e9);
    assert_eq!(value(&m, "agent_sidecar_build_info", &[]), 1.0);
}

#[tokio::test]
async fn queue_depth_counts_the_jobs_waiting_for_an_agent() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let blocker = start(&sidecar, &receiver, "lane", json!({})).await;
    eventually("the blocker to run", || async {
        let (_, job) = sidecar.get(&format!("/jobs/{blocker}")).await;
        (job["state"] == "in_progress").then_some(())
    })
    .await;
    for _ in 0..3 {
        start(&sidecar, &receiver, "lane", json!({"seconds": 0})).await;
    }
    let m = scrape(&sidecar).await;
    assert_eq!(
        value(&m, "agent_sidecar_queue_depth", &[("agent", "lane")]),
        3.0
    );
    assert_eq!(
        value(&m, "agent_sidecar_jobs_running", &[("agent", "lane")]),
        1.0
    );
    let (status, _) = sidecar
        .post_raw(&format!("/jobs/{blocker}/cancel"), Vec::new())
        .await;
    assert_eq!(status, 202);
}
