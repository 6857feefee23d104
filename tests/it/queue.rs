//! The queue through the trigger path, on SQLite and on PostgreSQL: a `low` job starts within
//! its aging bound while `high` jobs keep coming, and jobs of one priority start in the order
//! they were accepted (a sequence, not the clock: ties within a millisecond included).

use serde_json::{Value, json};

use crate::helpers::*;

/// `priority_aging` in these tests: a `low` job's key is its acceptance plus twice this.
const AGING_MS: i64 = 300;

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

async fn sidecar(backend: Backend, receiver: &Receiver) -> (Sidecar, Option<String>) {
    let aging = format!("{AGING_MS}ms");
    let mut env = vec![("JOBS__PRIORITY_AGING", aging.as_str())];
    let url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            Some(test_postgres::fresh_database(&test_postgres::test_server(), "queue").await)
        }
    };
    if let Some(url) = &url {
        env.push(("STORE__URL", url));
    }
    (Sidecar::start_with(receiver, &env, "").await, url)
}

use crate::fleet::test_postgres;

/// When the job first entered `state`, in ms since the epoch, if it did.
fn entered_if(job: &Value, state: &str) -> Option<i64> {
    let at = job["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == state)?["at"]
        .clone();
    Some(
        serde_json::from_value::<agent_sidecar::contract::Timestamp>(at)
            .unwrap()
            .unix_ms(),
    )
}

fn entered(job: &Value, state: &str) -> i64 {
    entered_if(job, state).unwrap_or_else(|| panic!("never {state}: {job}"))
}

/// Waits for the job to end (completed, or canceled while queued).
async fn wait_ended(sidecar: &Sidecar, job_id: &str) -> Value {
    eventually(&format!("job {job_id} to end"), || async {
        let job = job(sidecar, job_id).await;
        (job["state"] == "completed" || job["state"] == "canceled").then_some(job)
    })
    .await
}

/// Triggers a `lane` job (one at a time) sleeping `seconds` at `priority`.
async fn lane_job(sidecar: &Sidecar, receiver: &Receiver, priority: &str, seconds: f64) -> String {
    let mut body = trigger(receiver, "lane");
    body["priority"] = json!(priority);
    body["params"] = json!({ "seconds": seconds });
    sidecar.write_job(&body);
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, 202, "{answer}");
    body["job_id"].as_str().unwrap().to_owned()
}

async fn a_low_job_starts_within_its_aging_bound_while_high_jobs_keep_coming(backend: Backend) {
    let receiver = Receiver::start().await;
    let (sidecar, _db) = sidecar(backend, &receiver).await;
    let blocker = lane_job(&sidecar, &receiver, "normal", 3600.0).await;
    wait_state(&sidecar, &blocker, "in_progress").await;
    let low = lane_job(&sidecar, &receiver, "low", 0.0).await;
    let mut high = Vec::new();
    for _ in 0..5 {
        high.push(lane_job(&sidecar, &receiver, "high", 0.0).await);
    }
    let (status, _) = sidecar
        .post_raw(&format!("/jobs/{blocker}/cancel"), Vec::new())
        .await;
    assert_eq!(status, 202);
    // High jobs keep arriving faster than the lane runs them, until the low one has started.
    loop {
        high.push(lane_job(&sidecar, &receiver, "high", 0.0).await);
        let state = job(&sidecar, &low).await["state"].clone();
        if state != "queued" {
            break;
        }
        assert!(high.len() < 300, "the low job never started");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    // A few more after it started, so some are accepted past its bound.
    for _ in 0..3 {
        high.push(lane_job(&sidecar, &receiver, "high", 0.0).await);
    }
    // What is still queued need not run: cancel it (a queued job ends at once, never starts).
    for id in &high {
        let _ = sidecar
            .post_raw(&format!("/jobs/{id}/cancel"), Vec::new())
            .await;
    }
    let low_job = wait_state(&sidecar, &low, "completed").await;
    let (low_accepted, low_started) = (
        entered(&low_job, "queued"),
        entered(&low_job, "in_progress"),
    );
    let mut overtook = 0;
    for id in &high {
        let h = wait_ended(&sidecar, id).await;
        let Some(started) = entered_if(&h, "in_progress") else {
            continue;
        };
        let accepted = entered(&h, "queued");
        if accepted > low_accepted + 2 * AGING_MS {
            assert!(
                started > low_started,
                "high {id} accepted past the low job's bound ran first"
            );
        }
        if accepted > low_accepted && started < low_started {
            overtook += 1;
        }
    }
    assert!(
        overtook > 0,
        "no high job overtook the low one: priorities did nothing"
    );
}

async fn jobs_of_one_priority_start_in_the_order_they_were_accepted(backend: Backend) {
    let receiver = Receiver::start().await;
    let (sidecar, _db) = sidecar(backend, &receiver).await;
    let blocker = lane_job(&sidecar, &receiver, "normal", 3600.0).await;
    wait_state(&sidecar, &blocker, "in_progress").await;
    let mut ids: Vec<String> = (0..16).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    // Descending ids: where acceptance ties on the clock, a job_id tie-break runs them backwards.
    ids.sort_by(|a, b| b.cmp(a));
    for id in &ids {
        let mut body = trigger(&receiver, "lane");
        body["job_id"] = json!(id);
        body["params"] = json!({ "seconds": 0 });
        sidecar.write_job(&body);
        assert_eq!(sidecar.post_trigger(&body).await.0, 202);
    }
    let (status, _) = sidecar
        .post_raw(&format!("/jobs/{blocker}/cancel"), Vec::new())
        .await;
    assert_eq!(status, 202);
    let mut started = Vec::new();
    for id in &ids {
        let done = wait_state(&sidecar, id, "completed").await;
        started.push((entered(&done, "in_progress"), id.clone()));
    }
    started.sort();
    let order: Vec<String> = started.into_iter().map(|(_, id)| id).collect();
    assert_eq!(order, ids);
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
    a_low_job_starts_within_its_aging_bound_while_high_jobs_keep_coming,
    jobs_of_one_priority_start_in_the_order_they_were_accepted,
);
