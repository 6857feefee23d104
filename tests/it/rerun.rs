//! Issue 21: `POST /jobs/{job_id}/retry` re-runs an ended job as its next attempt, with the
//! earlier attempt's outputs kept aside.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

fn jti(hit: &Hit) -> String {
    verifier()
        .verify_callback(hit.authorization.as_deref(), &hit.body)
        .unwrap()
        .jti
}

async fn completions(receiver: &Receiver, job_id: &str, n: usize) -> Vec<Hit> {
    let hits = receiver
        .wait_until(&format!("{n} completions"), |hits| {
            hits.iter()
                .filter(|h| h.path == "/completion" && h.json()["job_id"] == job_id)
                .count()
                >= n
        })
        .await;
    hits.into_iter()
        .filter(|h| h.path == "/completion" && h.json()["job_id"] == job_id)
        .collect()
}

async fn retry(sidecar: &Sidecar, job_id: &str, body: Value) -> (StatusCode, Value) {
    sidecar
        .post_raw(
            &format!("/jobs/{job_id}/retry"),
            serde_json::to_vec(&body).unwrap(),
        )
        .await
}

#[tokio::test]
async fn a_failed_job_re_run_ends_with_a_second_completion_of_attempt_2_and_keeps_attempt_1_aside()
{
    // Arrange: a job that failed once.
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let body = trigger(&receiver, "failing_agent");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    let first = run_job(&sidecar, &receiver, &body).await;
    assert_eq!(first.json()["status"], "failed");
    let dir = sidecar.job_dir(&job_id);
    let first_log = std::fs::read_to_string(dir.join("output/log.txt")).unwrap();

    // Act
    let (status, accepted) = sidecar
        .post_raw(&format!("/jobs/{job_id}/retry"), Vec::new())
        .await;

    // Assert: queued as attempt 2, then ended again with a new delivery id.
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["attempt"], 2);
    assert_eq!(accepted["state"], "queued");
    assert_eq!(accepted["previous_output"], "output.attempt-1");
    let hits = completions(&receiver, &job_id, 2).await;
    assert_eq!(hits[1].json()["status"], "failed");
    assert_ne!(jti(&hits[0]), jti(&hits[1]), "a new delivery id");
    assert_eq!(
        hits[0].json()["meta"]["attempt"],
        1,
        "the completion names its run"
    );
    assert_eq!(hits[1].json()["meta"]["attempt"], 2);
    let job = wait_state(&sidecar, &job_id, "failed").await;
    assert_eq!(job["attempt"], 2, "{job}");
    let delivered = eventually("the second delivery shown", || async {
        let job = self::job(&sidecar, &job_id).await;
        (job["delivery"]["delivery_id"] == jti(&hits[1]).as_str()
            && job["delivery"]["state"] == "delivered")
            .then_some(job)
    })
    .await;
    assert_eq!(delivered["attempt"], 2);
    // Attempt 1's outputs are aside, untouched; output/ is attempt 2's alone.
    assert_eq!(
        std::fs::read_to_string(dir.join("output.attempt-1/log.txt")).unwrap(),
        first_log
    );
    assert!(dir.join("output/log.txt").is_file());
    let events = std::fs::read_to_string(dir.join("output/events.jsonl")).unwrap();
    assert!(events.lines().count() > 0);

    // The CLI reaches the running sidecar: attempt 3, attempt 2's outputs aside too.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(["jobs", "retry", &job_id, "--url", &sidecar.base])
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("attempt 3"), "{printed}");
    let hits = completions(&receiver, &job_id, 3).await;
    assert_eq!(hits[2].json()["meta"]["attempt"], 3);
    assert!(dir.join("output.attempt-2/log.txt").is_file());
}

#[tokio::test]
async fn a_completed_job_is_re_run_only_with_force_and_a_running_or_unknown_one_never() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;

    // A completed job: 409 naming its state, unless forced.
    let mut body = trigger(&receiver, "napper");
    body["params"] = json!({"seconds": 0});
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    assert_eq!(
        run_job(&sidecar, &receiver, &body).await.json()["status"],
        "completed"
    );
    let (status, refused) = retry(&sidecar, &job_id, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["state"], "completed");
    assert!(
        refused["detail"].as_str().unwrap().contains("force"),
        "{refused}"
    );
    let (status, accepted) = retry(&sidecar, &job_id, json!({"force": true})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["attempt"], 2);
    completions(&receiver, &job_id, 2).await;

    // A running job: 409 naming in_progress.
    let running = start_job(&sidecar, &receiver, "napper", json!({"seconds": 60})).await;
    wait_state(&sidecar, &running, "in_progress").await;
    let (status, refused) = retry(&sidecar, &running, json!({"force": true})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["state"], "in_progress");

    // Unknown: 404; a body that is not the request: 422.
    let unknown = uuid::Uuid::new_v4().to_string();
    let (status, missing) = retry(&sidecar, &unknown, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    assert!(missing["detail"].as_str().unwrap().contains(&unknown));
    let (status, bad) = retry(&sidecar, &job_id, json!({"forse": true})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
}
