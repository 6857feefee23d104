//! Steering jobs: cancel, priorities, the sweeper, crash recovery and draining on SIGTERM.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::helpers::*;

/// Writes the job's folder, triggers it and returns its id.
async fn cancel(sidecar: &Sidecar, job_id: &str) -> (u16, Value) {
    let (status, body) = sidecar
        .post_raw(&format!("/jobs/{job_id}/cancel"), Vec::new())
        .await;
    (status.as_u16(), body)
}

#[tokio::test]
async fn canceling_a_running_agent_kills_it_and_its_child_and_the_completion_says_canceled() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let job_id = start_job(&sidecar, &receiver, "with_child_long", json!({})).await;
    let hits = receiver
        .wait_until("the agent to report its pids", |hits| {
            hits.iter().any(|h| h.json()["stage"] == "pids")
        })
        .await;
    let pids: Vec<u32> = hits
        .iter()
        .find(|h| h.json()["stage"] == "pids")
        .map(|h| h.json()["message"].as_str().unwrap().to_owned())
        .unwrap()
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();

    let (status, answer) = cancel(&sidecar, &job_id).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["state"], "in_progress");
    let c = receiver.completion(&job_id).await.json();
    assert_eq!(c["status"], "canceled");
    assert_eq!(c["error"]["reason"], "canceled");
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived the cancel");
    }
    let summary: Value = serde_json::from_slice(
        &std::fs::read(sidecar.job_dir(&job_id).join("output/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["status"], "canceled", "outputs are finalized");

    let (status, again) = cancel(&sidecar, &job_id).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["state"], "canceled");
}

#[tokio::test]
async fn canceling_a_queued_job_means_it_never_starts() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let blocker = start_job(&sidecar, &receiver, "lane", json!({})).await;
    wait_state(&sidecar, &blocker, "in_progress").await;
    let queued = start_job(&sidecar, &receiver, "lane", json!({"seconds": 0})).await;

    let (status, answer) = cancel(&sidecar, &queued).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "canceled");
    let c = receiver.completion(&queued).await.json();
    assert_eq!(c["status"], "canceled");
    assert_eq!(c["meta"]["started_at"], Value::Null);

    assert_eq!(cancel(&sidecar, &blocker).await.0, 202);
    receiver.completion(&blocker).await;
    let job = job(&sidecar, &queued).await;
    assert_eq!(states(&job), ["received", "queued", "canceled"]);
    assert_eq!(job["attempt"], 0, "the agent never ran");
}

#[tokio::test]
async fn cancel_of_an_unknown_job_is_404_and_of_a_malformed_id_names_the_field() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let (status, problem) = cancel(&sidecar, &uuid::Uuid::new_v4().to_string()).await;
    assert_eq!(status, 404, "{problem}");
    let (status, problem) = cancel(&sidecar, "not-a-uuid").await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/job_id");
}

#[tokio::test]
async fn the_cli_cancels_a_running_job_and_says_so_when_it_has_already_ended() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let job_id = start_job(&sidecar, &receiver, "napper", json!({})).await;
    wait_state(&sidecar, &job_id, "in_progress").await;
    let cli = |id: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
            .args(["jobs", "cancel", id, "--url", &sidecar.base])
            .output()
            .unwrap()
    };
    let out = cli(&job_id);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopping"));
    assert_eq!(
        receiver.completion(&job_id).await.json()["status"],
        "canceled"
    );

    let out = cli(&job_id);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one readable line: {stderr}");
    assert!(stderr.contains("already ended (canceled)"), "{stderr}");
}

#[tokio::test]
async fn higher_priority_jobs_start_first_within_an_agents_limit_and_fifo_holds_within_one() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let blocker = start_job(&sidecar, &receiver, "lane", json!({})).await;
    wait_state(&sidecar, &blocker, "in_progress").await;
    let mut ids = HashMap::new();
    for (name, priority) in [
        ("low", "low"),
        ("normal_1", "normal"),
        ("high", "high"),
        ("normal_2", "normal"),
    ] {
        let mut body = trigger(&receiver, "lane");
        body["params"] = json!({"seconds": 0});
        body["priority"] = json!(priority);
        sidecar.write_job(&body);
        assert_eq!(sidecar.post_trigger(&body).await.0, 202);
        ids.insert(name, body["job_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(cancel(&sidecar, &blocker).await.0, 202);
    let mut started = Vec::new();
    for (name, id) in &ids {
        receiver.completion(id).await;
        let job = job(&sidecar, id).await;
        let at = job["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["state"] == "in_progress")
            .map(|t| t["at"].as_str().unwrap().to_owned())
            .unwrap();
        started.push((at, *name));
    }
    started.sort();
    let order: Vec<&str> = started.iter().map(|(_, n)| *n).collect();
    assert_eq!(order, ["high", "normal_1", "normal_2", "low"]);
}

#[tokio::test]
async fn a_silent_agent_past_its_stale_after_is_swept_to_timed_out_with_a_completion() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let job_id = start_job(&sidecar, &receiver, "silent", json!({})).await;
    let c = receiver.completion(&job_id).await.json();
    assert_eq!(c["status"], "timed_out");
    assert_eq!(c["error"]["reason"], "stale");
    assert!(
        c["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stale_after of 300ms"),
        "{c}"
    );
    assert!(sidecar.log().contains("sweeper: stopping the agent"));
}

#[tokio::test]
async fn a_job_queued_past_max_queue_age_ends_timed_out_with_reason_queue_timeout() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(&receiver, &[("JOBS__MAX_QUEUE_AGE", "300ms")]).await;
    let blocker = start_job(&sidecar, &receiver, "lane", json!({})).await;
    wait_state(&sidecar, &blocker, "in_progress").await;
    let waiting = start_job(&sidecar, &receiver, "lane", json!({"seconds": 0})).await;
    let c = receiver.completion(&waiting).await.json();
    assert_eq!(c["status"], "timed_out");
    assert_eq!(c["error"]["reason"], "queue_timeout");
    assert_eq!(
        job(&sidecar, &blocker).await["state"],
        "in_progress",
        "a running job is not queue-timed-out"
    );
    assert_eq!(cancel(&sidecar, &blocker).await.0, 202);
}

#[tokio::test]
async fn after_a_sigkill_with_20_jobs_queued_or_running_each_ends_once_with_one_completion() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    // The first four (started first, FIFO) outlive the crash by far; the rest are quick.
    let mut ids = Vec::new();
    for i in 0..20 {
        let seconds = if i < 4 { 3.0 } else { 0.2 };
        ids.push(start_job(&sidecar, &receiver, "napper", json!({"seconds": seconds})).await);
    }
    let running: Vec<String> = eventually("four jobs running", || async {
        let (_, list) = sidecar.get("/jobs?state=in_progress").await;
        let running: Vec<String> = list["jobs"]
            .as_array()?
            .iter()
            .map(|j| j["job_id"].as_str().unwrap().to_owned())
            .collect();
        (running.len() == 4).then_some(running)
    })
    .await;
    let sidecar = sidecar.crash_and_restart();

    for id in &ids {
        receiver.completion(id).await;
    }
    let completions = receiver.hits("/completion");
    for id in &ids {
        let job = wait_state(&sidecar, id, "completed").await;
        let terminal: Vec<String> = states(&job)
            .into_iter()
            .filter(|s| ["completed", "failed", "canceled", "timed_out"].contains(&s.as_str()))
            .collect();
        assert_eq!(terminal, ["completed"], "{id}: exactly one terminal state");
        let delivery_ids: HashSet<String> = completions
            .iter()
            .filter(|h| h.json()["job_id"] == id.as_str())
            .map(|h| h.headers["webhook-id"].to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            delivery_ids.len(),
            1,
            "{id}: one completion (retries reuse its id)"
        );
        if running.contains(id) {
            assert_eq!(
                job["attempt"], 2,
                "{id} was running at the crash: requeued and rerun"
            );
        }
    }
}

#[tokio::test]
async fn sigterm_drains_running_jobs_refuses_triggers_with_retry_after_and_exits_0() {
    let receiver = Receiver::start().await;
    let mut sidecar = Sidecar::start_with_env(&receiver, &[("JOBS__DRAIN_TIMEOUT", "30s")]).await;
    let job_id = start_job(&sidecar, &receiver, "napper", json!({"seconds": 1.5})).await;
    wait_state(&sidecar, &job_id, "in_progress").await;
    let base = sidecar.base.clone();
    let pid = sidecar.pid().to_string();
    let refused = tokio::spawn(async move {
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        eventually("triggers to be refused while draining", || async {
            let response = client()
                .post(format!("{base}/agents/trigger"))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .ok()?;
            (response.status() == 503).then(|| {
                response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
        })
        .await
    })
    .await
    .unwrap();
    assert!(refused.parse::<u32>().unwrap() > 0);
    let status = tokio::task::spawn_blocking(move || {
        let status = sidecar.wait();
        (status, sidecar)
    })
    .await
    .unwrap();
    let (status, sidecar) = status;
    assert_eq!(status.code(), Some(0), "exits 0 after draining");
    let c = receiver.completion(&job_id).await.json();
    assert_eq!(
        c["status"], "completed",
        "the running job finished during the drain"
    );
    drop(sidecar);
}

#[tokio::test]
async fn jobs_still_running_at_the_drain_timeout_are_stopped_and_resumed_by_the_next_start() {
    let receiver = Receiver::start().await;
    let mut sidecar = Sidecar::start(&receiver).await;
    let job_id = start_job(&sidecar, &receiver, "napper", json!({})).await;
    wait_state(&sidecar, &job_id, "in_progress").await;
    let status = sidecar.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(
        receiver.hits("/completion").is_empty(),
        "an interrupted job is not ended"
    );
    let sidecar = sidecar.restart();
    let job = eventually("the job to run again", || async {
        let job = job(&sidecar, &job_id).await;
        (job["state"] == "in_progress" && job["attempt"] == 2).then_some(job)
    })
    .await;
    assert_eq!(
        states(&job),
        ["received", "queued", "in_progress", "queued", "in_progress"]
    );
    assert_eq!(cancel(&sidecar, &job_id).await.0, 202);
    assert_eq!(
        receiver.completion(&job_id).await.json()["status"],
        "canceled"
    );
}

#[tokio::test]
async fn a_run_no_process_supervises_is_swept_to_timed_out_once_past_its_timeout() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let blocker = start_job(&sidecar, &receiver, "lane", json!({})).await;
    wait_state(&sidecar, &blocker, "in_progress").await;
    let orphan = start_job(&sidecar, &receiver, "lane", json!({})).await;
    // A run claimed long ago that no process of this sidecar supervises, under a lease that
    // another node keeps renewing (so it is not taken over): only its timeout ends it.
    let db = rusqlite::Connection::open(sidecar.dir.path().join("state.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let changed = db
        .execute(
            "UPDATE jobs SET state = 'in_progress', attempt = 1, started_at = 0, node_id = 'another-node', \
             incarnation = 'elsewhere', lease_until = 9000000000000 WHERE job_id = ?1 AND state = 'queued'",
            [&orphan],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let c = receiver.completion(&orphan).await.json();
    assert_eq!(c["status"], "timed_out");
    assert_eq!(c["error"]["reason"], "timeout");
    assert_eq!(job(&sidecar, &blocker).await["state"], "in_progress");
    assert_eq!(cancel(&sidecar, &blocker).await.0, 202);
}

/// Waits until a sweeper pass has pruned a job, folders included (counted after both).
async fn pruned(sidecar: &Sidecar) {
    eventually("a job to be pruned", || async {
        let n = metric(
            sidecar,
            "agent_sidecar_sweeper_actions_total",
            &[("action", "pruned")],
        )
        .await;
        (n >= 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn terminal_jobs_past_the_retention_are_pruned_with_their_folders_when_configured() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(
        &receiver,
        &[
            ("SWEEPER__RETENTION", "1ms"),
            ("SWEEPER__PRUNE_FOLDERS", "true"),
        ],
    )
    .await;
    let job_id = start_job(&sidecar, &receiver, "ticker", json!({"count": 1})).await;
    receiver.completion(&job_id).await;
    pruned(&sidecar).await;
    assert_eq!(sidecar.get(&format!("/jobs/{job_id}")).await.0, 404);
    assert!(!sidecar.job_dir(&job_id).exists(), "its folder is deleted");
    assert!(sidecar.log().contains("sweeper: pruned from the store"));
}

#[tokio::test]
async fn pruning_keeps_job_folders_unless_configured() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(&receiver, &[("SWEEPER__RETENTION", "1ms")]).await;
    let job_id = start_job(&sidecar, &receiver, "ticker", json!({"count": 1})).await;
    receiver.completion(&job_id).await;
    pruned(&sidecar).await;
    assert_eq!(sidecar.get(&format!("/jobs/{job_id}")).await.0, 404);
    assert!(
        sidecar
            .job_dir(&job_id)
            .join("output/summary.json")
            .exists(),
        "without prune_folders the folder stays"
    );
}

#[tokio::test]
async fn a_cancel_accepted_just_before_a_sigkill_ends_canceled_after_the_restart() {
    let receiver = Receiver::start().await;
    // The agent ignores SIGTERM, so it is still running (kill_grace) when the sidecar dies.
    let sidecar = Sidecar::start_with_env(&receiver, &[("JOBS__KILL_GRACE", "30s")]).await;
    let job_id = start_job(
        &sidecar,
        &receiver,
        "napper",
        json!({"ignore_sigterm": true}),
    )
    .await;
    wait_state(&sidecar, &job_id, "in_progress").await;
    assert_eq!(cancel(&sidecar, &job_id).await.0, 202);
    let sidecar = sidecar.crash_and_restart();
    let c = receiver.completion(&job_id).await.json();
    assert_eq!(c["status"], "canceled", "{c}");
    let done = job(&sidecar, &job_id).await;
    assert_eq!(done["attempt"], 1, "not requeued: {done}");
    assert_eq!(
        states(&done),
        ["received", "queued", "in_progress", "canceled"]
    );
}

#[tokio::test]
async fn a_job_that_used_every_attempt_ends_failed_saying_so() {
    let receiver = Receiver::start().await;
    let env = [("AGENTS__NAPPER__MAX_ATTEMPTS", "2")];
    let mut sidecar = Sidecar::start_with_env(&receiver, &env).await;
    let job_id = start_job(&sidecar, &receiver, "napper", json!({})).await;
    for attempt in 1..=2 {
        eventually(&format!("attempt {attempt} to run"), || async {
            let j = job(&sidecar, &job_id).await;
            (j["state"] == "in_progress" && j["attempt"] == attempt).then_some(())
        })
        .await;
        sidecar = sidecar.crash_and_restart();
    }
    let c = receiver.completion(&job_id).await.json();
    assert_eq!(c["status"], "failed", "{c}");
    assert_eq!(c["error"]["reason"], "sidecar_restarted");
    let message = c["error"]["message"].as_str().unwrap();
    assert!(message.contains("all 2 attempts are used"), "{message}");
    assert_eq!(job(&sidecar, &job_id).await["attempt"], 2);
}

#[tokio::test]
async fn queued_jobs_stay_queued_through_a_drain_and_run_after_the_restart() {
    let receiver = Receiver::start().await;
    let mut sidecar = Sidecar::start(&receiver).await;
    let blocker = start_job(&sidecar, &receiver, "lane", json!({})).await;
    wait_state(&sidecar, &blocker, "in_progress").await;
    let queued = start_job(&sidecar, &receiver, "lane", json!({"seconds": 0})).await;
    sidecar.signal("-TERM");
    // While the drain waits for the blocker, the queued job is not started nor ended.
    let mut seen = Vec::new();
    loop {
        match client()
            .get(format!("{}/jobs/{queued}", sidecar.base))
            .send()
            .await
        {
            Ok(r) => {
                let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                seen.push(body["state"].clone());
            }
            Err(_) => break,
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|s| s == "queued"), "{seen:?}");
    assert_eq!(sidecar.wait().code(), Some(0));
    let sidecar = sidecar.restart();
    // The interrupted blocker keeps its place ahead; cancel it so the queued job can run.
    wait_state(&sidecar, &blocker, "in_progress").await;
    assert_eq!(cancel(&sidecar, &blocker).await.0, 202);
    assert_eq!(
        receiver.completion(&queued).await.json()["status"],
        "completed"
    );
    let done = job(&sidecar, &queued).await;
    assert_eq!(done["attempt"], 1);
    assert_eq!(
        states(&done),
        ["received", "queued", "in_progress", "completed"]
    );
}

#[tokio::test]
async fn a_panic_in_supervision_ends_the_attempt_internal_kills_the_agent_and_frees_the_slot() {
    let receiver = Receiver::start().await;
    // Fires once: the first agent's supervision panics right after its spawn.
    let sidecar = Sidecar::start_with_process_env_observing(
        &receiver,
        &[("FAILPOINTS", "agent_started=1*panic(injected)")],
        |_| {},
    );
    let first = start_job(&sidecar, &receiver, "lane", json!({})).await;
    let c = receiver.completion(&first).await.json();
    assert_eq!(c["status"], "failed", "{c}");
    assert_eq!(c["error"]["reason"], "internal", "{c}");
    let message = c["error"]["message"].as_str().unwrap();
    assert!(message.contains("injected"), "{message}");
    let status = wait_state(&sidecar, &first, "failed").await;
    assert_eq!(status["error"]["reason"], "internal", "{status}");

    // The agent (an hour's sleeper) went with the supervision that unwound.
    let log = sidecar.log();
    let line = log
        .lines()
        .find(|l| l.contains("agent started") && l.contains(&first))
        .unwrap_or_else(|| panic!("no start line for {first} in\n{log}"));
    let pid = serde_json::from_str::<Value>(line).unwrap()["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {line}"));
    let pid = u32::try_from(pid).unwrap();
    assert!(!alive(pid), "agent {pid} outlived its panicked supervision");

    // `lane` runs one at a time: the next job starts only if the slot was freed.
    let second = start_job(&sidecar, &receiver, "lane", json!({"seconds": 0})).await;
    let c = receiver.completion(&second).await.json();
    assert_eq!(c["status"], "completed", "{c}");
    assert_eq!(
        log.matches("the attempt's supervision failed").count(),
        1,
        "the panic is logged once: {log}"
    );
}
