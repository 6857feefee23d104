//! The completion outbox: retries on schedule with a stable delivery id, dead letters that are
//! visible and recoverable, and nothing lost across a crash.

use axum::http::StatusCode;
use serde_json::Value;

use crate::helpers::*;

async fn job_status(sidecar: &Sidecar, job_id: &str) -> Value {
    sidecar.get(&format!("/jobs/{job_id}")).await.1
}

/// Waits until the job's completion delivery is in `state`.
async fn delivery_in_state(sidecar: &Sidecar, job_id: &str, state: &str) -> Value {
    eventually(&format!("delivery {state}"), || async {
        let job = job_status(sidecar, job_id).await;
        (job["delivery"]["state"] == state).then(|| job["delivery"].clone())
    })
    .await
}

fn jti(hit: &Hit) -> String {
    verifier()
        .verify_callback(hit.authorization.as_deref(), &hit.body)
        .unwrap()
        .jti
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_the_completion_once_it_is_up_with_the_same_id_on_a_backoff_schedule()
 {
    // A port bound but not listening: connections are refused until the receiver starts there.
    let (reserved, addr) = Receiver::reserve();
    let receiver_stub = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(
        &receiver_stub,
        &[
            (
                "CALLBACKS__ALLOWED_ORIGINS",
                &format!("[\"http://{addr}\"]"),
            ),
            (
                "CALLBACKS__RETRY_SCHEDULE",
                "[\"0s\", \"300ms\", \"600ms\", \"900ms\"]",
            ),
        ],
    )
    .await;
    let mut body = trigger(&receiver_stub, "failing_agent");
    body["callback_urls"]["progress"] = format!("http://{addr}/progress").into();
    body["callback_urls"]["completion"] = format!("http://{addr}/completion").into();
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    sidecar.write_job(&body);
    assert_eq!(sidecar.post_trigger(&body).await.0, StatusCode::ACCEPTED);

    let refused = eventually("three refused attempts", || async {
        let job = job_status(&sidecar, &job_id).await;
        (job["delivery"]["attempts"].as_u64() >= Some(3)).then_some(job["delivery"].clone())
    })
    .await;
    let receiver = Receiver::start_on(reserved).await;
    let hit = receiver.completion(&job_id).await;
    let delivered = delivery_in_state(&sidecar, &job_id, "delivered").await;
    assert_eq!(
        jti(&hit),
        delivered["delivery_id"].as_str().unwrap(),
        "jti is the delivery id"
    );
    assert_eq!(
        hit.headers["webhook-id"],
        delivered["delivery_id"].as_str().unwrap()
    );
    assert_eq!(
        refused["delivery_id"], delivered["delivery_id"],
        "one delivery id across retries"
    );

    // Attempt times follow the schedule (each gap at least the scheduled delay less 20% jitter).
    let times: Vec<i64> = delivered["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a["at"]
                .as_str()
                .unwrap()
                .parse::<agent_sidecar::contract::Timestamp>()
                .unwrap()
                .unix_ms()
        })
        .collect();
    let schedule_ms = [300, 600, 900, 900, 900, 900];
    for (i, gap) in times.windows(2).map(|w| w[1] - w[0]).enumerate() {
        assert!(
            gap >= schedule_ms[i] * 8 / 10,
            "gap {i} was {gap} ms, schedule says {} ms: {times:?}",
            schedule_ms[i]
        );
    }
    let history = delivered["history"].as_array().unwrap();
    assert!(
        history[0]["error"].as_str().unwrap().contains("connection"),
        "{history:?}"
    );
    assert_eq!(history.last().unwrap()["status_code"], 200);
}

#[tokio::test]
async fn a_receiver_answering_422_dead_letters_at_once_with_the_code_recorded() {
    let receiver = Receiver::answering(StatusCode::UNPROCESSABLE_ENTITY).await;
    let sidecar = Sidecar::start(&receiver).await;
    let body = trigger(&receiver, "failing_agent");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    run_job(&sidecar, &receiver, &body).await;
    let dead = delivery_in_state(&sidecar, &job_id, "dead").await;
    assert_eq!(
        dead["attempts"], 1,
        "a permanent error is not retried: {dead}"
    );
    assert_eq!(dead["last_status_code"], 422);
    let (_, listed) = sidecar
        .get("/deliveries?state=dead&job_name=ReportCompileJob")
        .await;
    let ids: Vec<&str> = listed["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["delivery_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [dead["delivery_id"].as_str().unwrap()]);
    assert_eq!(receiver.hits("/completion").len(), 1);
}

#[tokio::test]
async fn a_delivery_failing_past_its_age_limit_is_dead_lettered_and_a_redrive_delivers_it_with_its_id()
 {
    let receiver = Receiver::answering(StatusCode::INTERNAL_SERVER_ERROR).await;
    let sidecar = Sidecar::start_with_env(&receiver, &[("CALLBACKS__MAX_AGE", "1s")]).await;
    let body = trigger(&receiver, "failing_agent");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    run_job(&sidecar, &receiver, &body).await;
    let dead = delivery_in_state(&sidecar, &job_id, "dead").await;
    assert_eq!(dead["last_status_code"], 500);
    assert_eq!(
        job_status(&sidecar, &job_id).await["state"],
        "failed",
        "the job's state is untouched"
    );

    receiver.set_completion_status(StatusCode::OK);
    let id = dead["delivery_id"].as_str().unwrap();
    let (status, redriven) = sidecar
        .post_raw(&format!("/deliveries/{id}/redrive"), Vec::new())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{redriven}");
    let delivered = delivery_in_state(&sidecar, &job_id, "delivered").await;
    assert_eq!(delivered["delivery_id"], id);
    let last = receiver.hits("/completion").into_iter().last().unwrap();
    assert_eq!(jti(&last), id, "a redriven delivery keeps its id");
    assert_eq!(
        last.body,
        receiver.hits("/completion")[0].body,
        "and its body"
    );

    let (status, again) = sidecar
        .post_raw(&format!("/deliveries/{id}/redrive"), Vec::new())
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "only dead deliveries are redriven: {again}"
    );
}

#[tokio::test]
async fn bulk_redrive_by_filter_and_the_cli_see_the_same_dead_letters() {
    let receiver = Receiver::answering(StatusCode::GONE).await;
    let sidecar = Sidecar::start(&receiver).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let body = trigger(&receiver, "failing_agent");
        run_job(&sidecar, &receiver, &body).await;
        ids.push(delivery_in_state(&sidecar, body["job_id"].as_str().unwrap(), "dead").await["delivery_id"].clone());
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(["deliveries", "list", "--state", "dead", "--config"])
        .arg(&sidecar.config_path)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in &ids {
        assert!(
            listed.contains(id.as_str().unwrap()),
            "{id} missing from {listed}"
        );
    }
    assert!(listed.contains("HTTP 410"), "{listed}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(["deliveries", "list", "--state", "buried", "--config"])
        .arg(&sidecar.config_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--state"),
        "the bad flag is named"
    );

    receiver.set_completion_status(StatusCode::OK);
    let (status, result) = sidecar
        .post_raw(
            "/deliveries/redrive?state=dead&job_name=ReportCompileJob",
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(result["redriven"].as_array().unwrap().len(), 2, "{result}");
    receiver
        .wait_until("both redriven completions", |hits| {
            hits.iter().filter(|h| h.path == "/completion").count() >= 4
        })
        .await;
}

#[tokio::test]
async fn a_completion_pending_when_the_sidecar_is_killed_is_delivered_after_restart() {
    let receiver = Receiver::answering(StatusCode::SERVICE_UNAVAILABLE).await;
    let sidecar = Sidecar::start(&receiver).await;
    let body = trigger(&receiver, "failing_agent");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    let refused = run_job(&sidecar, &receiver, &body).await;
    let sidecar = sidecar.crash_and_restart();
    // Only now may an attempt succeed: whatever delivers it is the restarted process.
    receiver.set_completion_status(StatusCode::OK);
    let delivered = delivery_in_state(&sidecar, &job_id, "delivered").await;
    let last = receiver.hits("/completion").into_iter().last().unwrap();
    assert_eq!(
        jti(&last),
        jti(&refused),
        "the same delivery id after the restart"
    );
    assert_eq!(delivered["delivery_id"], jti(&last).as_str());
}

#[tokio::test]
async fn a_bad_delivery_query_names_the_parameter() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let (status, answer) = sidecar.get("/deliveries?since=yesterday").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["errors"][0]["source"], "query");
    assert_eq!(answer["errors"][0]["pointer"], "/since");
}

#[tokio::test]
async fn ten_thousand_progress_lines_are_coalesced_into_few_ordered_posts_ending_with_the_last_line()
 {
    let receiver = Receiver::start().await;
    let sidecar =
        Sidecar::start_with_env(&receiver, &[("CALLBACKS__PROGRESS_MIN_INTERVAL", "50ms")]).await;
    let mut body = trigger(&receiver, "burst");
    body["params"] = serde_json::json!({"lines": 10_000});
    let completion = run_job(&sidecar, &receiver, &body).await;
    let posts = receiver.hits("/progress");
    // At most one post per 50 ms of the run, plus the first and the flush of the last line.
    let ran_ms = completion.json()["meta"]["duration_ms"].as_u64().unwrap();
    let bound = usize::try_from(ran_ms / 50 + 3).unwrap();
    assert!(
        !posts.is_empty() && posts.len() <= bound,
        "{} progress posts for 10,000 lines in {ran_ms} ms",
        posts.len()
    );
    let seqs: Vec<u64> = posts
        .iter()
        .map(|h| h.json()["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(posts.last().unwrap().json()["message"], "line 9999");
    let metrics: Value = serde_json::from_slice(
        &std::fs::read(
            sidecar
                .job_dir(body["job_id"].as_str().unwrap())
                .join("output/metrics.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(metrics["progress_events"], 10_000, "every line was read");
    assert_eq!(completion.json()["status"], "completed");
    let all = receiver.wait_until("all callbacks", |_| true).await;
    assert_eq!(
        all.last().unwrap().path,
        "/completion",
        "the completion comes after the last progress post"
    );
}

/// Issue 23: the completion does not wait for the progress poster's pacing or retries. With
/// progress answered 503 (so its retries back off) and a long minimum interval, the last
/// progress is still flushed, and the completion arrives right after the end is committed.
#[tokio::test]
async fn the_completion_goes_out_at_once_after_the_last_progress_even_while_progress_fails() {
    let receiver = Receiver::start().await;
    receiver.set_progress_status(StatusCode::SERVICE_UNAVAILABLE);
    let sidecar =
        Sidecar::start_with_env(&receiver, &[("CALLBACKS__PROGRESS_MIN_INTERVAL", "500ms")]).await;
    let mut body = trigger(&receiver, "ticker");
    body["params"] = serde_json::json!({"count": 3, "interval": 0.05});
    let completion = run_job(&sidecar, &receiver, &body).await;
    let committed = committed_at(&sidecar, body["job_id"].as_str().unwrap());
    let latency_ms = completion.at_unix_ms - committed.unix_ms();
    println!("completion arrived {latency_ms} ms after the job's end was committed");
    // 200 ms leaves room for a loaded CI machine and is still less than half the pacing
    // (500 ms) and the first progress retry (400 ms) it used to wait for.
    assert!(
        latency_ms < 200,
        "completion {latency_ms} ms after the end's commit"
    );
    let progress = receiver.hits("/progress");
    let last = progress.last().expect("progress was posted").json();
    assert_eq!(
        last["message"].as_str().map(str::trim),
        Some("tick 2"),
        "the last progress is flushed"
    );
    let all = receiver.wait_until("all callbacks", |_| true).await;
    assert_eq!(
        all.last().unwrap().path,
        "/completion",
        "progress, then completion"
    );
    let seqs: Vec<u64> = progress
        .iter()
        .map(|h| h.json()["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{seqs:?}");
}

/// When the sidecar logged that the job's end was committed ("job ended", logged right after
/// the store's commit returns and before the completion is handed over).
fn committed_at(sidecar: &Sidecar, job_id: &str) -> agent_sidecar::contract::Timestamp {
    let log = sidecar.log();
    let line = log
        .lines()
        .filter(|l| l.contains(job_id))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|entry| entry["message"] == "job ended")
        .unwrap_or_else(|| panic!("no 'job ended' line in {log}"));
    line["timestamp"].as_str().unwrap().parse().unwrap()
}

/// Issue 21: a pending delivery whose retry is an hour away, with the receiver back.
async fn a_completion_waiting_an_hour_for_its_retry(
    receiver: &Receiver,
) -> (Sidecar, String, String) {
    receiver.set_completion_status(StatusCode::SERVICE_UNAVAILABLE);
    let sidecar = Sidecar::start_with_env(
        receiver,
        &[("CALLBACKS__RETRY_SCHEDULE", "[\"0s\", \"1h\"]")],
    )
    .await;
    let body = trigger(receiver, "failing_agent");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    run_job(&sidecar, receiver, &body).await;
    let waiting = eventually("the first attempt recorded", || async {
        let job = job_status(&sidecar, &job_id).await;
        (job["delivery"]["attempts"] == 1).then(|| job["delivery"].clone())
    })
    .await;
    assert_eq!(waiting["state"], "pending", "{waiting}");
    let next: agent_sidecar::contract::Timestamp = waiting["next_attempt_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = agent_sidecar::contract::Timestamp::now();
    assert!(
        next.millis_since(now) > 30 * 60 * 1000,
        "the retry is far away: {waiting}"
    );
    receiver.set_completion_status(StatusCode::OK);
    let id = waiting["delivery_id"].as_str().unwrap().to_owned();
    (sidecar, job_id, id)
}

/// Issue 21: `POST /deliveries/{id}/deliver` attempts a pending delivery at once instead of
/// at its next scheduled attempt (an hour away), with its id; refusals name the state or id.
#[tokio::test]
async fn deliver_sends_a_pending_delivery_at_once_instead_of_at_its_retry_an_hour_away() {
    // Arrange
    let receiver = Receiver::start().await;
    let (sidecar, job_id, id) = a_completion_waiting_an_hour_for_its_retry(&receiver).await;

    // Act
    let (status, answer) = sidecar
        .post_raw(&format!("/deliveries/{id}/deliver"), Vec::new())
        .await;

    // Assert: accepted with the delivery's status, then attempted within moments.
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["delivery_id"], id.as_str());
    assert_eq!(answer["job_id"], job_id.as_str());
    let hits = receiver
        .wait_until("the delivered-now attempt", |hits| {
            hits.iter().filter(|h| h.path == "/completion").count() >= 2
        })
        .await;
    let last = hits.iter().rfind(|h| h.path == "/completion").unwrap();
    assert_eq!(jti(last), id, "the same delivery id");
    let delivered = delivery_in_state(&sidecar, &job_id, "delivered").await;
    assert_eq!(delivered["attempts"], 2, "{delivered}");

    // A delivered one is refused, naming its state; an unknown id, naming the id.
    let (status, again) = sidecar
        .post_raw(&format!("/deliveries/{id}/deliver"), Vec::new())
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["state"], "delivered");
    assert!(again["detail"].as_str().unwrap().contains(&id), "{again}");
    let (status, unknown) = sidecar
        .post_raw("/deliveries/dlv_nonesuch/deliver", Vec::new())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
    assert!(
        unknown["detail"].as_str().unwrap().contains("dlv_nonesuch"),
        "{unknown}"
    );
}

/// Issue 21: a dead delivery is not delivered now but redriven; the refusal says so.
#[tokio::test]
async fn deliver_refuses_a_dead_delivery_naming_its_state_and_redrive() {
    let receiver = Receiver::answering(StatusCode::GONE).await;
    let sidecar = Sidecar::start(&receiver).await;
    let body = trigger(&receiver, "failing_agent");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    run_job(&sidecar, &receiver, &body).await;
    let dead = delivery_in_state(&sidecar, &job_id, "dead").await;
    let id = dead["delivery_id"].as_str().unwrap();
    let (status, refused) = sidecar
        .post_raw(&format!("/deliveries/{id}/deliver"), Vec::new())
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["state"], "dead");
    assert!(
        refused["detail"].as_str().unwrap().contains("redrive"),
        "{refused}"
    );
    assert_eq!(receiver.hits("/completion").len(), 1, "nothing sent");
}

async fn cli(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(args)
        .output()
        .await
        .unwrap()
}

/// Issue 21: `deliveries deliver ID` and `deliveries redrive` go through the running
/// sidecar's API (the store is not written behind its back), so its worker sends at once.
#[tokio::test]
async fn the_cli_delivers_and_redrives_through_the_running_sidecar() {
    // Arrange
    let receiver = Receiver::start().await;
    let (sidecar, job_id, id) = a_completion_waiting_an_hour_for_its_retry(&receiver).await;

    // Act: redrive refuses a pending one (the API's answer), deliver sends it.
    let refused = cli(&["deliveries", "redrive", "--id", &id, "--url", &sidecar.base]).await;
    let delivered = cli(&["deliveries", "deliver", &id, "--url", &sidecar.base]).await;

    // Assert
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only dead deliveries are redriven"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let out = String::from_utf8_lossy(&delivered.stdout);
    assert!(
        delivered.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&delivered.stderr)
    );
    assert!(out.contains(&id), "{out}");
    receiver
        .wait_until("the delivered-now attempt", |hits| {
            hits.iter().filter(|h| h.path == "/completion").count() >= 2
        })
        .await;
    delivery_in_state(&sidecar, &job_id, "delivered").await;

    // And a dead one, redriven by the CLI, is sent at once too.
    receiver.set_completion_status(StatusCode::GONE);
    let body = trigger(&receiver, "failing_agent");
    let second = body["job_id"].as_str().unwrap().to_owned();
    run_job(&sidecar, &receiver, &body).await;
    delivery_in_state(&sidecar, &second, "dead").await;
    receiver.set_completion_status(StatusCode::OK);
    let redriven = cli(&[
        "deliveries",
        "redrive",
        "--job-name",
        "ReportCompileJob",
        "--url",
        &sidecar.base,
    ])
    .await;
    let out = String::from_utf8_lossy(&redriven.stdout);
    assert!(redriven.status.success(), "{out}");
    assert!(out.contains("1 delivery(ies)"), "{out}");
    delivery_in_state(&sidecar, &second, "delivered").await;
}
