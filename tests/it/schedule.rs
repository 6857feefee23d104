//! Issue 21 item 4: a trigger's `run_at` or `delay` accepts the job at once (202, durable) as
//! `scheduled`; it starts no earlier, can be canceled while it waits, is listed by
//! `GET /jobs?state=scheduled`, and its `max_queue_age` counts from its `run_at`. On SQLite and
//! on PostgreSQL.

use agent_sidecar::contract::Timestamp;
use serde_json::{Value, json};

use crate::fleet::test_postgres;
use crate::helpers::*;

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

async fn sidecar(backend: Backend, receiver: &Receiver, env: &[(&str, &str)]) -> Sidecar {
    let mut env = env.to_vec();
    let url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            Some(test_postgres::fresh_database(&test_postgres::test_server(), "schedule").await)
        }
    };
    if let Some(url) = &url {
        env.push(("STORE__URL", url));
    }
    Sidecar::start_with(receiver, &env, "").await
}

/// Triggers `agent` with `params` and the scheduling fields of `when`; answers the trigger's
/// status and body.
async fn trigger_when(
    sidecar: &Sidecar,
    receiver: &Receiver,
    agent: &str,
    params: Value,
    when: Value,
) -> (String, u16, Value) {
    let mut body = trigger(receiver, agent);
    body["params"] = params;
    for (key, value) in when.as_object().unwrap() {
        body[key] = value.clone();
    }
    sidecar.write_job(&body);
    let (status, answer) = sidecar.post_trigger(&body).await;
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    (job_id, status.as_u16(), answer)
}

fn at(value: &Value) -> Timestamp {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{value}: {e}"))
}

fn entered(job: &Value, state: &str) -> Timestamp {
    let t = job["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == state)
        .unwrap_or_else(|| panic!("never {state}: {job}"));
    at(&t["at"])
}

async fn a_job_with_run_at_is_scheduled_and_starts_no_earlier(backend: Backend) {
    // Arrange
    let receiver = Receiver::start().await;
    let sidecar = sidecar(backend, &receiver, &[]).await;
    let run_at = Timestamp::now().plus(std::time::Duration::from_millis(700));

    // Act
    let (job_id, status, answer) = trigger_when(
        &sidecar,
        &receiver,
        "napper",
        json!({"seconds": 0}),
        json!({"run_at": run_at.to_string()}),
    )
    .await;

    // Assert: accepted scheduled, listed as such, then run no earlier than its run_at.
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "scheduled");
    let (_, listed) = sidecar.get("/jobs?state=scheduled").await;
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["job_id"].as_str())
        .collect();
    assert!(ids.contains(&job_id.as_str()), "{listed}");
    let scheduled = job(&sidecar, &job_id).await;
    assert!(
        scheduled["state"] == "scheduled" || entered(&scheduled, "in_progress") >= run_at,
        "{scheduled}"
    );
    let completion = receiver.completion(&job_id).await.json();
    assert_eq!(completion["status"], "completed");
    let done = wait_state(&sidecar, &job_id, "completed").await;
    assert!(entered(&done, "in_progress") >= run_at, "{done}");
    assert!(at(&done["attempts"][0]["started_at"]) >= run_at, "{done}");
    assert_eq!(
        states(&done),
        [
            "received",
            "scheduled",
            "queued",
            "in_progress",
            "completed"
        ]
    );
}

async fn a_delayed_job_is_canceled_while_it_waits(backend: Backend) {
    // Arrange: a job to start in 30 s.
    let receiver = Receiver::start().await;
    let sidecar = sidecar(backend, &receiver, &[]).await;
    let (job_id, status, answer) = trigger_when(
        &sidecar,
        &receiver,
        "napper",
        json!({"seconds": 0}),
        json!({"delay": 30}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let waiting = job(&sidecar, &job_id).await;
    assert_eq!(waiting["state"], "scheduled");
    assert!(at(&waiting["run_at"]) > Timestamp::now(), "{waiting}");

    // Act
    let (status, canceled) = sidecar
        .post_raw(&format!("/jobs/{job_id}/cancel"), Vec::new())
        .await;

    // Assert: canceled at once, never run.
    assert_eq!(status, 200, "{canceled}");
    assert_eq!(canceled["state"], "canceled");
    let completion = receiver.completion(&job_id).await.json();
    assert_eq!(completion["status"], "canceled");
    let ended = job(&sidecar, &job_id).await;
    assert!(
        !states(&ended).contains(&"in_progress".to_owned()),
        "{ended}"
    );
    assert_eq!(ended["attempt"], 0);
}

async fn max_queue_age_counts_from_run_at(backend: Backend) {
    // Arrange: the lane's one slot is held; a job due in 1.5 s may wait 1 s in the queue.
    let receiver = Receiver::start().await;
    let sidecar = sidecar(backend, &receiver, &[("JOBS__MAX_QUEUE_AGE", "1s")]).await;
    let blocker = start_job(&sidecar, &receiver, "lane", json!({})).await;
    wait_state(&sidecar, &blocker, "in_progress").await;

    // Act
    let (job_id, status, answer) = trigger_when(
        &sidecar,
        &receiver,
        "lane",
        json!({"seconds": 0}),
        json!({"delay": 1.5}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");

    // Assert: expired from the queue, but only a full max_queue_age after its run_at (from
    // its acceptance it would be expired the moment it was queued).
    let completion = receiver.completion(&job_id).await.json();
    assert_eq!(
        completion["error"]["reason"], "queue_timeout",
        "{completion}"
    );
    let ended = job(&sidecar, &job_id).await;
    let run_at = entered(&ended, "received").plus(std::time::Duration::from_millis(1500));
    let expired = entered(&ended, "timed_out");
    assert!(
        expired.millis_since(run_at) >= 1000,
        "expired {} ms after its run_at: {ended}",
        expired.millis_since(run_at)
    );
    let (status, _) = sidecar
        .post_raw(&format!("/jobs/{blocker}/cancel"), Vec::new())
        .await;
    assert_eq!(status, 202);
}

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::Backend::Sqlite).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            #[cfg_attr(not(postgres_tests), ignore = "needs AGENT_SIDECAR_TEST_POSTGRES_URL (.ci/run starts a server)")]
            async fn $case() {
                super::$case(super::Backend::Postgres).await;
            })*
        }
    };
}

on_both_stores!(
    a_job_with_run_at_is_scheduled_and_starts_no_earlier,
    a_delayed_job_is_canceled_while_it_waits,
    max_queue_age_counts_from_run_at,
);

#[tokio::test]
async fn bad_schedules_are_refused_at_their_field() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let now = Timestamp::now();
    let hour = std::time::Duration::from_secs(3600);
    let cases = [
        (
            json!({"run_at": now.minus(hour).to_string()}),
            "/run_at",
            "in the past",
        ),
        (
            json!({"run_at": now.plus(hour * 24 * 40).to_string()}),
            "/run_at",
            "30 days",
        ),
        (json!({"run_at": "tomorrow"}), "/run_at", ""),
        (
            json!({"run_at": now.plus(hour).to_string(), "delay": 5}),
            "/delay",
            "not both",
        ),
        (json!({"delay": -1}), "/delay", ""),
        (json!({"delay": 2_592_001}), "/delay", ""),
        (json!({"delay": "5s"}), "/delay", ""),
    ];
    for (when, pointer, detail) in cases {
        let (job_id, status, problem) =
            trigger_when(&sidecar, &receiver, "napper", json!({}), when.clone()).await;
        assert_eq!(status, 422, "{when}: {problem}");
        let errors = problem["errors"].as_array().unwrap();
        assert!(
            errors
                .iter()
                .any(|e| e["pointer"] == pointer && e["detail"].as_str().unwrap().contains(detail)),
            "{when}: {problem}"
        );
        let (status, _) = sidecar.get(&format!("/jobs/{job_id}")).await;
        assert_eq!(status, 404, "{when}: nothing was stored");
    }
    // A run_at a little behind the sidecar's clock is taken as now.
    let (job_id, status, answer) = trigger_when(
        &sidecar,
        &receiver,
        "napper",
        json!({"seconds": 0}),
        json!({"run_at": now.minus(std::time::Duration::from_secs(5)).to_string()}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "queued");
    receiver.completion(&job_id).await;
}
