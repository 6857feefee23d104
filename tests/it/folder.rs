//! The job folder as an interface: status.json and events.jsonl tell the same story as the API.

use serde_json::{Value, json};

use crate::helpers::*;

fn read_json(path: std::path::PathBuf) -> Value {
    serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn events_file(sidecar: &Sidecar, job_id: &str) -> Vec<Value> {
    std::fs::read_to_string(sidecar.job_dir(job_id).join("output/events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The SSE replay of a finished job, as `data` documents.
async fn replay(sidecar: &Sidecar, job_id: &str) -> Vec<Value> {
    let text = client()
        .get(format!("{}/jobs/{job_id}/events", sidecar.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim_start()).unwrap())
        .collect()
}

/// Waits until the completion's delivery is recorded on disk, then compares the folder with
/// the API.
async fn folder_matches_api(sidecar: &Sidecar, job_id: &str) -> Value {
    let status = eventually("status.json to show the delivered completion", || async {
        let path = sidecar.job_dir(job_id).join("output/status.json");
        let status: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        (status["delivery"]["state"] == "delivered").then_some(status)
    })
    .await;
    assert_valid("status.json", &status);
    let (_, api) = sidecar.get(&format!("/jobs/{job_id}")).await;
    assert_eq!(status, api, "status.json is what GET /jobs/{{id}} answers");
    let on_disk = events_file(sidecar, job_id);
    let job_events: Vec<Value> = on_disk
        .iter()
        .filter(|e| e["type"] == "state" || e["type"] == "progress")
        .cloned()
        .collect();
    assert_eq!(
        job_events,
        replay(sidecar, job_id).await,
        "events.jsonl = the SSE replay"
    );
    let deliveries: Vec<&Value> = on_disk.iter().filter(|e| e["type"] == "delivery").collect();
    assert_eq!(deliveries.len(), 1, "{on_disk:?}");
    assert_eq!(deliveries[0]["outcome"], "delivered");
    assert_eq!(
        on_disk.last().unwrap()["type"],
        "delivery",
        "delivery after the end"
    );
    status
}

#[tokio::test]
async fn status_json_and_events_jsonl_tell_the_same_story_as_the_api_for_every_ending() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let mut ids = Vec::new();
    for (agent, params) in [
        ("ticker", json!({"count": 5})),
        ("failing_agent", json!({})),
        ("with_child", json!({})),
    ] {
        let mut body = trigger(&receiver, agent);
        body["params"] = params;
        sidecar.write_job(&body);
        assert_eq!(sidecar.post_trigger(&body).await.0, 202);
        ids.push(body["job_id"].as_str().unwrap().to_owned());
    }
    let mut body = trigger(&receiver, "napper");
    body["params"] = json!({});
    sidecar.write_job(&body);
    assert_eq!(sidecar.post_trigger(&body).await.0, 202);
    let napper = body["job_id"].as_str().unwrap().to_owned();
    let running = eventually("status.json to say in_progress", || async {
        let path = sidecar.job_dir(&napper).join("output/status.json");
        let status: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        (status["state"] == "in_progress").then_some(status)
    })
    .await;
    assert_eq!(running["attempt"], 1);
    let (status, _) = sidecar
        .post_raw(&format!("/jobs/{napper}/cancel"), Vec::new())
        .await;
    assert_eq!(status, 202);
    ids.push(napper);

    let mut endings = Vec::new();
    for id in &ids {
        receiver.completion(id).await;
        let status = folder_matches_api(&sidecar, id).await;
        endings.push(status["state"].as_str().unwrap().to_owned());
    }
    assert_eq!(endings, ["completed", "failed", "timed_out", "canceled"]);
    let progress = read_json(sidecar.job_dir(&ids[0]).join("output/status.json"));
    assert_eq!(progress["last_progress"]["stage"], "tick");
}

#[tokio::test]
async fn events_jsonl_is_bounded_and_says_so() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(&receiver, &[("JOBS__EVENTS_PER_JOB", "20")]).await;
    let mut body = trigger(&receiver, "ticker");
    body["params"] = json!({"count": 60, "interval": 0.005});
    sidecar.write_job(&body);
    assert_eq!(sidecar.post_trigger(&body).await.0, 202);
    let job_id = body["job_id"].as_str().unwrap();
    receiver.completion(job_id).await;
    let lines = eventually("the delivery line", || async {
        let lines = events_file(&sidecar, job_id);
        lines
            .iter()
            .any(|l| l["type"] == "delivery")
            .then_some(lines)
    })
    .await;
    let truncated: Vec<&Value> = lines.iter().filter(|l| l["type"] == "truncated").collect();
    assert_eq!(truncated.len(), 1, "one line says the bound was hit");
    let progress = lines.iter().filter(|l| l["type"] == "progress").count();
    assert!(progress <= 20, "{progress} progress lines");
    assert!(
        lines.iter().any(|l| l["state"] == "completed"),
        "state changes are always written"
    );
}
