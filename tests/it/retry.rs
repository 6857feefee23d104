//! Issue 21 item 1: `[agents.NAME.retry]` runs a failed attempt again after its backoff, with
//! one completion for the final outcome, every attempt in the job's status, and the waiting
//! job holding no slot and surviving a restart.

use serde_json::{Value, json};

use crate::helpers::*;

/// Test agents with retry policies (`flaky.py` fails its first `fail_times` attempts).
fn agents() -> String {
    let flaky = repo().join("tests/agents/flaky.py").display().to_string();
    let agent = |name: &str, extra: &str| {
        format!("\n[agents.{name}]\ncommand = [\"python3\", {flaky:?}]\ntimeout = \"60s\"\n{extra}")
    };
    [
        agent(
            "flaky",
            "[agents.flaky.retry]\nattempts = 3\non_exit_codes = [75]\ndelays = [\"300ms\"]\n",
        ),
        agent(
            "flaky_twice",
            "[agents.flaky_twice.retry]\nattempts = 2\non_exit_codes = [75]\nbase = \"100ms\"\nmax = \"200ms\"\njitter = \"none\"\n",
        ),
        // One run at a time, and a long wait: the waiting job must leave the slot free.
        agent(
            "flaky_lane",
            "max_concurrent = 1\n[agents.flaky_lane.retry]\nattempts = 2\non_exit_codes = [75]\ndelays = [\"60s\"]\n",
        ),
        agent(
            "flaky_restart",
            "[agents.flaky_restart.retry]\nattempts = 2\non_exit_codes = [75]\ndelays = [\"1500ms\"]\n",
        ),
    ]
    .concat()
}

fn completions_of(receiver: &Receiver, job_id: &str) -> Vec<Hit> {
    receiver
        .hits("/completion")
        .into_iter()
        .filter(|h| h.json()["job_id"] == job_id)
        .collect()
}

fn progress_messages(receiver: &Receiver, job_id: &str) -> Vec<String> {
    receiver
        .hits("/progress")
        .into_iter()
        .map(|h| h.json())
        .filter(|p| p["job_id"] == job_id)
        .filter_map(|p| p["message"].as_str().map(str::to_owned))
        .collect()
}

/// The (attempt, state, exit code, retried) of each ended attempt in a status document.
fn attempts(job: &Value) -> Vec<(u64, String, Option<i64>, bool)> {
    job["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["state"].as_str().unwrap().to_owned(),
                a["exit_code"].as_i64(),
                !a["retry_at"].is_null(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_agent_exiting_75_is_retried_and_rails_hears_one_completion_of_the_final_attempt() {
    // Arrange
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &agents()).await;

    // Act: attempt 1 exits 75, attempt 2 completes.
    let job_id = start_job(&sidecar, &receiver, "flaky", json!({"fail_times": 1})).await;
    let completion = receiver.completion(&job_id).await;

    // Assert: one completion, the final outcome; both attempts in the status.
    assert_eq!(completion.json()["status"], "completed");
    let job = wait_state(&sidecar, &job_id, "completed").await;
    assert_eq!(job["attempt"], 2, "{job}");
    assert_eq!(
        attempts(&job),
        [
            (1, "failed".to_owned(), Some(75), true),
            (2, "completed".to_owned(), Some(0), false)
        ]
    );
    let first = &job["attempts"][0];
    assert_eq!(first["error"]["reason"], "exit_code");
    // The second attempt started no earlier than the first one's retry time.
    let second_start: agent_sidecar::contract::Timestamp =
        serde_json::from_value(job["attempts"][1]["started_at"].clone()).unwrap();
    let retry_at: agent_sidecar::contract::Timestamp =
        serde_json::from_value(first["retry_at"].clone()).unwrap();
    assert!(second_start >= retry_at, "{job}");
    assert!(states(&job).contains(&"scheduled".to_owned()), "{job}");
    assert_eq!(completions_of(&receiver, &job_id).len(), 1);
    // Rails was told of the retry as progress.
    let messages = progress_messages(&receiver, &job_id);
    assert!(
        messages.contains(&"retrying in 0.3 s (attempt 2 of 3)".to_owned()),
        "{messages:?}"
    );
    // Attempt 1's outputs are aside; output/ is attempt 2's alone.
    let dir = sidecar.job_dir(&job_id);
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
    assert_eq!(read("output.attempt-1/attempt.txt"), "1");
    assert!(read("output.attempt-1/error.log").contains("75"));
    assert_eq!(read("output/attempt.txt"), "2");
    // status.json and events.jsonl carry the attempts and the wait.
    let status = eventually("status.json with both attempts", || async {
        let text = std::fs::read_to_string(dir.join("output/status.json")).ok()?;
        let doc: Value = serde_json::from_str(&text).ok()?;
        (doc["state"] == "completed").then_some(doc)
    })
    .await;
    assert_valid("status.json", &status);
    assert_eq!(attempts(&status), attempts(&job));
    let events = read("output/events.jsonl");
    assert!(events.contains(r#""state":"scheduled""#), "{events}");
}

#[tokio::test]
async fn when_attempts_run_out_the_one_completion_carries_the_final_failure() {
    // Arrange
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &agents()).await;

    // Act: it fails every attempt; the policy allows 2.
    let job_id = start_job(&sidecar, &receiver, "flaky_twice", json!({"fail_times": 9})).await;
    let completion = receiver.completion(&job_id).await.json();

    // Assert
    assert_eq!(completion["status"], "failed");
    assert_eq!(completion["error"]["exit_code"], 75);
    let job = wait_state(&sidecar, &job_id, "failed").await;
    assert_eq!(
        attempts(&job),
        [
            (1, "failed".to_owned(), Some(75), true),
            (2, "failed".to_owned(), Some(75), false)
        ]
    );
    assert_eq!(completions_of(&receiver, &job_id).len(), 1);
    let messages = progress_messages(&receiver, &job_id);
    assert!(
        messages.contains(&"retrying in 0.1 s (attempt 2 of 2)".to_owned()),
        "exponential without jitter starts at base: {messages:?}"
    );
}

#[tokio::test]
async fn an_agents_final_retry_line_is_honoured_with_the_wait_it_asks_for() {
    // Arrange: exit code 1 is not in the policy, but the agent asks.
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &agents()).await;

    // Act
    let params = json!({"fail_times": 1, "exit_code": 1, "ask_after_s": 0.2});
    let job_id = start_job(&sidecar, &receiver, "flaky", params).await;

    // Assert: retried after the 0.2 s it asked for; the ask is no progress event.
    assert_eq!(
        receiver.completion(&job_id).await.json()["status"],
        "completed"
    );
    let messages = progress_messages(&receiver, &job_id);
    assert!(
        messages.contains(&"retrying in 0.2 s (attempt 2 of 3)".to_owned()),
        "{messages:?}"
    );
    assert!(
        !messages.iter().any(|m| m.contains("\"retry\"")),
        "{messages:?}"
    );
    let job = job(&sidecar, &job_id).await;
    assert_eq!(job["attempts"][0]["exit_code"], 1, "{job}");
}

#[tokio::test]
async fn a_job_waiting_for_its_retry_holds_no_slot_and_can_be_canceled() {
    // Arrange: an agent with one slot; job A fails and waits 60 s for its retry.
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &agents()).await;
    let a = start_job(&sidecar, &receiver, "flaky_lane", json!({"fail_times": 1})).await;
    let waiting = wait_state(&sidecar, &a, "scheduled").await;
    assert!(waiting["run_at"].is_string(), "{waiting}");

    // Act: job B needs the agent's only slot.
    let b = start_job(&sidecar, &receiver, "flaky_lane", json!({})).await;

    // Assert: B ran to its end while A waited; A is canceled from its wait.
    assert_eq!(receiver.completion(&b).await.json()["status"], "completed");
    assert_eq!(job(&sidecar, &a).await["state"], "scheduled");
    let (status, listed) = sidecar.get("/jobs?state=scheduled").await;
    assert_eq!(status, 200, "{listed}");
    assert!(
        listed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["job_id"] == a.as_str()),
        "{listed}"
    );
    let (status, canceled) = sidecar
        .post_raw(&format!("/jobs/{a}/cancel"), Vec::new())
        .await;
    assert_eq!(status, 200, "{canceled}");
    let completion = receiver.completion(&a).await.json();
    assert_eq!(completion["status"], "canceled");
    assert_eq!(completions_of(&receiver, &a).len(), 1);
}

#[tokio::test]
async fn a_waiting_retry_survives_a_restart_and_runs_on_schedule() {
    // Arrange: attempt 1 failed; the job waits 1.5 s for attempt 2.
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &agents()).await;
    let job_id = start_job(
        &sidecar,
        &receiver,
        "flaky_restart",
        json!({"fail_times": 1}),
    )
    .await;
    let waiting = wait_state(&sidecar, &job_id, "scheduled").await;
    let retry_at: agent_sidecar::contract::Timestamp =
        serde_json::from_value(waiting["run_at"].clone()).unwrap();

    // Act: the sidecar is killed (by its pid) and started again on the same store.
    let pid = sidecar.pid();
    let sidecar = sidecar.crash_and_restart();
    assert!(!alive(pid), "the first process is gone");

    // Assert: attempt 2 ran after its time, once; one completion.
    assert_eq!(
        receiver.completion(&job_id).await.json()["status"],
        "completed"
    );
    let job = wait_state(&sidecar, &job_id, "completed").await;
    assert_eq!(job["attempt"], 2, "{job}");
    let started: agent_sidecar::contract::Timestamp =
        serde_json::from_value(job["attempts"][1]["started_at"].clone()).unwrap();
    assert!(started >= retry_at, "{job}");
    assert_eq!(completions_of(&receiver, &job_id).len(), 1);
}
