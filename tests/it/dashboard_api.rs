//! Issue 20: the JSON API behind mission control — the jobs list's filters, counts and cursor,
//! the overview, and bulk actions — against a real sidecar running real agents.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

async fn post_json(sidecar: &Sidecar, path: &str, body: Value) -> (StatusCode, Value) {
    sidecar
        .post_raw(path, serde_json::to_vec(&body).unwrap())
        .await
}

fn ids(list: &Value) -> Vec<String> {
    list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_jobs_list_filters_counts_and_pages_by_cursor() {
    // Arrange: three finished jobs of two users, one failed.
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let mut accepted = Vec::new();
    for (user, agent) in [
        ("ada", "summarizer_v2"),
        ("bob", "failing_agent"),
        ("ada", "summarizer_v2"),
    ] {
        let mut body = trigger(&receiver, agent);
        body["user_id"] = json!(user);
        run_job(&sidecar, &receiver, &body).await;
        accepted.push(body["job_id"].as_str().unwrap().to_owned());
    }

    // Act: page one at a time.
    let mut paged = Vec::new();
    let mut next = String::new();
    loop {
        let (status, page) = sidecar.get(&format!("/jobs?limit=1{next}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        paged.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => next = format!("&cursor={cursor}"),
            None => break,
        }
    }

    // Assert
    let newest_first: Vec<_> = accepted.iter().rev().cloned().collect();
    assert_eq!(
        paged, newest_first,
        "every job once, newest first, no empty last page"
    );
    let (_, ada) = sidecar.get("/jobs?user_id=ada").await;
    assert_eq!(ids(&ada), [accepted[2].clone(), accepted[0].clone()]);
    let (_, failed) = sidecar
        .get("/jobs?state=failed&job_name=ReportCompileJob")
        .await;
    assert_eq!(ids(&failed), [accepted[1].clone()]);
    let (_, by_prefix) = sidecar
        .get(&format!(
            "/jobs?id_prefix={}",
            &accepted[1][..6].to_uppercase()
        ))
        .await;
    assert_eq!(ids(&by_prefix), [accepted[1].clone()]);
    let (_, counts) = sidecar.get("/jobs/counts").await;
    assert_eq!(counts["total"], 3, "{counts}");
    assert_eq!(
        counts["counts"],
        json!([{"state": "completed", "count": 2}, {"state": "failed", "count": 1}])
    );
}

#[tokio::test]
async fn bad_list_filters_are_refused_at_their_field() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    for (query, field) in [
        ("priority=urgent", "/priority"),
        ("since=yesterday", "/since"),
        ("id_prefix=xyz", "/id_prefix"),
        ("cursor=nope", "/cursor"),
        ("limit=0", "/limit"),
    ] {
        let (status, problem) = sidecar.get(&format!("/jobs?{query}")).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {problem}"
        );
        assert_eq!(problem["errors"][0]["pointer"], field, "{query}: {problem}");
    }
    let (status, problem) = sidecar.get("/overview?window=9y").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/window");
    let (status, problem) = sidecar.get("/deliveries?status_code=42").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/status_code");
}

#[tokio::test]
async fn the_overview_counts_what_ran_queues_and_running_against_the_limit() {
    // Arrange: one job done, one running on `lane` (max_concurrent 1), one queued behind it.
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let done = trigger(&receiver, "summarizer_v2");
    run_job(&sidecar, &receiver, &done).await;
    let done = done["job_id"].as_str().unwrap();
    // The attempt is recorded once Rails has answered: wait for it, not for the POST.
    eventually("the completion recorded delivered", || async {
        (job(&sidecar, done).await["delivery"]["state"] == "delivered").then_some(())
    })
    .await;
    let running = start_job(&sidecar, &receiver, "lane", json!({})).await;
    wait_state(&sidecar, &running, "in_progress").await;
    start_job(&sidecar, &receiver, "lane", json!({})).await;

    // Act
    let (status, overview) = sidecar.get("/overview?window=15m").await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{overview}");
    let agent = |name: &str| {
        overview["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["agent"] == name)
            .cloned()
            .unwrap()
    };
    let lane = agent("lane");
    assert_eq!(
        (
            lane["running"].clone(),
            lane["max_concurrent"].clone(),
            lane["queued"].clone()
        ),
        (json!(1), json!(1), json!(1)),
        "{lane}"
    );
    assert!(lane["oldest_queued_at"].is_string());
    let summarizer = agent("summarizer_v2");
    assert_eq!(
        summarizer["counts"],
        json!([{"state": "completed", "count": 1}])
    );
    assert_eq!(overview["buckets"].as_array().unwrap().len(), 60);
    assert_eq!(overview["bucket_seconds"], 15);
    let ended: u64 = overview["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["completed"].as_u64().unwrap())
        .sum();
    assert_eq!(ended, 1);
    assert_eq!(overview["duration_ms"]["count"], 1);
    assert!(overview["callback_latency_ms"]["count"].as_u64().unwrap() >= 1);
    assert_eq!(overview["dead_letters"], 0);
    sidecar
        .post_raw(&format!("/jobs/{running}/cancel"), Vec::new())
        .await;
}

#[tokio::test]
async fn bulk_cancel_and_retry_take_each_job_as_its_own_endpoint_would() {
    // Arrange: a running job, a failed one, and one that does not exist.
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let failed = trigger(&receiver, "failing_agent");
    run_job(&sidecar, &receiver, &failed).await;
    let failed = failed["job_id"].as_str().unwrap().to_owned();
    let running = start_job(&sidecar, &receiver, "napper", json!({})).await;
    wait_state(&sidecar, &running, "in_progress").await;
    let unknown = uuid::Uuid::new_v4().to_string();

    // Act
    let (status, cancel) = post_json(
        &sidecar,
        "/jobs/bulk/cancel",
        json!({"job_ids": [running, failed, unknown]}),
    )
    .await;
    wait_state(&sidecar, &running, "canceled").await;
    let (retry_status, retry) = post_json(
        &sidecar,
        "/jobs/bulk/retry",
        json!({"job_ids": [failed, running]}),
    )
    .await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{cancel}");
    assert_eq!(
        (cancel["done"].clone(), cancel["refused"].clone()),
        (json!(1), json!(2)),
        "{cancel}"
    );
    let statuses: Vec<_> = cancel["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [202, 409, 404]);
    assert_eq!(cancel["results"][0]["state"], "in_progress");
    assert!(
        cancel["results"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("already ended")
    );
    assert_eq!(retry_status, StatusCode::OK, "{retry}");
    assert_eq!(retry["results"][0]["status"], 202, "{retry}");
    assert_eq!(retry["results"][0]["state"], "queued");
    assert_eq!(
        retry["results"][1]["status"], 202,
        "a canceled job re-runs: {retry}"
    );
    let second = receiver
        .wait_until("the re-run's completion", |hits| {
            hits.iter()
                .filter(|h| h.path == "/completion" && h.json()["job_id"] == failed.as_str())
                .count()
                >= 2
        })
        .await;
    assert!(!second.is_empty());
    for body in [
        json!({"job_ids": []}),
        json!({"job_ids": ["nope"]}),
        json!({}),
    ] {
        let (status, problem) = post_json(&sidecar, "/jobs/bulk/cancel", body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
    }
    sidecar
        .post_raw(&format!("/jobs/{running}/cancel"), Vec::new())
        .await;
}
