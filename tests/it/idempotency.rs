//! Idempotency under races: the same trigger sent concurrently, again while queued and while
//! running, and over HTTP and as a folder `trigger.json` at once is one job that runs once,
//! and every answer carries the job's current state.

use serde_json::{Value, json};

use crate::helpers::*;

/// The job ran exactly once: one attempt, one start in its log, one completion.
async fn ran_once(sidecar: &Sidecar, receiver: &Receiver, job_id: &str) {
    receiver.completion(job_id).await;
    let done = job(sidecar, job_id).await;
    assert_eq!(done["attempt"], 1, "{done}");
    let log = std::fs::read_to_string(sidecar.job_dir(job_id).join("output/log.txt")).unwrap();
    assert_eq!(log.matches("started: pid").count(), 1, "{log}");
    let completions = receiver
        .hits("/completion")
        .iter()
        .filter(|h| h.json()["job_id"] == job_id)
        .count();
    assert_eq!(completions, 1);
}

#[tokio::test]
async fn identical_triggers_sent_at_once_are_one_job_that_runs_once() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let mut body = trigger(&receiver, "ticker");
    body["params"] = json!({"count": 1});
    sidecar.write_job(&body);
    let answers = futures_util::future::join_all((0..8).map(|_| sidecar.post_trigger(&body))).await;
    for (status, answer) in &answers {
        assert_eq!(*status, 202, "{answer}");
        assert_eq!(answer["job_id"], body["job_id"]);
        let state = answer["status"].as_str().unwrap();
        assert!(
            ["queued", "in_progress", "completed"].contains(&state),
            "{answer}"
        );
    }
    ran_once(&sidecar, &receiver, body["job_id"].as_str().unwrap()).await;
}

#[tokio::test]
async fn an_identical_trigger_while_queued_and_while_running_answers_that_state() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let mut blocker = trigger(&receiver, "lane");
    blocker["params"] = json!({"seconds": 3600});
    sidecar.write_job(&blocker);
    assert_eq!(sidecar.post_trigger(&blocker).await.0, 202);
    let blocker_id = blocker["job_id"].as_str().unwrap();
    wait_state(&sidecar, blocker_id, "in_progress").await;

    let mut queued = trigger(&receiver, "lane");
    queued["params"] = json!({"seconds": 0});
    sidecar.write_job(&queued);
    assert_eq!(sidecar.post_trigger(&queued).await.0, 202);
    let (status, again) = sidecar.post_trigger(&queued).await;
    assert_eq!(
        (status.as_u16(), again["status"].clone()),
        (202, json!("queued"))
    );

    let (status, again) = sidecar.post_trigger(&blocker).await;
    assert_eq!(
        (status.as_u16(), again["status"].clone()),
        (202, json!("in_progress"))
    );

    let (status, _) = sidecar
        .post_raw(&format!("/jobs/{blocker_id}/cancel"), Vec::new())
        .await;
    assert_eq!(status, 202);
    ran_once(&sidecar, &receiver, queued["job_id"].as_str().unwrap()).await;
    let (status, again) = sidecar.post_trigger(&blocker).await;
    assert_eq!(
        (status.as_u16(), again["status"].clone()),
        (202, json!("canceled"))
    );
}

#[tokio::test]
async fn an_http_trigger_racing_a_folder_trigger_for_the_same_job_runs_it_once() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(&receiver, &[("STORAGE__FOLDER_TRIGGERS", "true")]).await;
    for _ in 0..5 {
        let mut body = trigger(&receiver, "ticker");
        body["params"] = json!({"count": 1, "interval": 0});
        let job_dir = sidecar.write_job(&body);
        let tmp = job_dir.join("input/.trigger.json.tmp");
        std::fs::write(&tmp, body.to_string()).unwrap();
        // The file lands and the request leaves at the same moment.
        let (posted, ()) = tokio::join!(sidecar.post_trigger(&body), async {
            std::fs::rename(&tmp, job_dir.join("input/trigger.json")).unwrap();
        });
        assert_eq!(posted.0, 202, "{}", posted.1);
        let job_id = body["job_id"].as_str().unwrap();
        let folder_answer: Value = eventually("output/trigger-response.json", || async {
            let path = job_dir.join("output/trigger-response.json");
            serde_json::from_slice(&std::fs::read(path).ok()?).ok()
        })
        .await;
        assert_eq!(folder_answer["job_id"], job_id, "{folder_answer}");
        assert!(folder_answer["status"].is_string(), "{folder_answer}");
        ran_once(&sidecar, &receiver, job_id).await;
    }
}
