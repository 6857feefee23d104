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
    let text = sidecar.get_text(&format!("/jobs/{job_id}/events")).await;
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
    assert!((1..=20).contains(&progress), "{progress} progress lines");
    assert!(
        lines.iter().any(|l| l["state"] == "completed"),
        "state changes are always written"
    );
}

/// Writes `input/trigger.json` the way Rails does: a temp file, then a rename.
fn drop_trigger(sidecar: &Sidecar, body: &Value) {
    let job_dir = sidecar.write_job(body);
    let tmp = job_dir.join("input/.trigger.json.tmp");
    std::fs::write(&tmp, body.to_string()).unwrap();
    std::fs::rename(&tmp, job_dir.join("input/trigger.json")).unwrap();
}

async fn response(sidecar: &Sidecar, job_id: &str) -> Value {
    eventually("output/trigger-response.json", || async {
        let path = sidecar.job_dir(job_id).join("output/trigger-response.json");
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    })
    .await
}

const FOLDER_TRIGGERS: (&str, &str) = ("STORAGE__FOLDER_TRIGGERS", "true");
/// No periodic rescan within a test: what is found is found by the watcher (or the rescan at
/// start).
const NO_RESCAN: (&str, &str) = ("STORAGE__RESCAN_INTERVAL", "1h");

#[tokio::test]
async fn a_folder_trigger_runs_the_job_end_to_end_and_writes_the_api_answer() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(&receiver, &[FOLDER_TRIGGERS, NO_RESCAN]).await;
    let mut body = trigger(&receiver, "ticker");
    body["params"] = json!({"count": 2});
    drop_trigger(&sidecar, &body);
    let job_id = body["job_id"].as_str().unwrap();
    let c = receiver.completion(job_id).await.json();
    assert_eq!(c["status"], "completed");
    assert_eq!(c["job_name"], "ReportCompileJob");
    let answer = response(&sidecar, job_id).await;
    assert_eq!(answer["job_id"], job_id);
    assert_eq!(answer["status"], "queued");
    assert!(answer["status_url"].as_str().unwrap().ends_with(job_id));
}

#[tokio::test]
async fn an_invalid_folder_trigger_gets_its_problem_in_the_folder_and_runs_nothing() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(&receiver, &[FOLDER_TRIGGERS, NO_RESCAN]).await;
    let mut body = trigger(&receiver, "ticker");
    body["job_name"] = json!("NotAllowedJob");
    drop_trigger(&sidecar, &body);
    let job_id = body["job_id"].as_str().unwrap();
    let problem = response(&sidecar, job_id).await;
    assert_eq!(problem["status"], 422, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/job_name");
    assert_eq!(sidecar.get(&format!("/jobs/{job_id}")).await.0, 404);
}

/// Issue 18: the rule of the HTTP trigger (a job folder is named by the lower-case id) holds
/// for folder triggers too: a folder named in upper case is answered, at `/job_id`, not ignored.
#[tokio::test]
async fn a_folder_named_by_an_upper_case_job_id_is_answered_with_the_rule_and_runs_nothing() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(&receiver, &[FOLDER_TRIGGERS, NO_RESCAN]).await;
    let mut body = trigger(&receiver, "ticker");
    let lower = body["job_id"].as_str().unwrap().to_owned();
    let upper = lower.to_ascii_uppercase();
    body["job_id"] = json!(upper);
    drop_trigger(&sidecar, &body);
    let problem = response(&sidecar, &upper).await;
    assert_eq!(problem["status"], 422, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/job_id");
    assert_eq!(
        problem["errors"][0]["detail"],
        format!("the job folder must be named by the job id in lower case ({lower}), not {upper}")
    );
    assert_eq!(sidecar.get(&format!("/jobs/{lower}")).await.0, 404);
}

#[tokio::test]
async fn two_hundred_trigger_files_dropped_at_once_each_run_exactly_once() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(&receiver, &[FOLDER_TRIGGERS, NO_RESCAN]).await;
    let mut ids = Vec::new();
    for _ in 0..200 {
        let mut body = trigger(&receiver, "ticker");
        body["params"] = json!({"count": 1, "interval": 0});
        drop_trigger(&sidecar, &body);
        ids.push(body["job_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        receiver.completion(id).await;
    }
    for id in &ids {
        let (_, job) = sidecar.get(&format!("/jobs/{id}")).await;
        assert_eq!(job["attempt"], 1, "{id} ran once");
    }
    let completions = receiver.hits("/completion");
    assert_eq!(completions.len(), 200, "one completion per job");
}

#[tokio::test]
async fn a_folder_made_while_the_sidecar_was_stopped_is_watched_for_its_trigger_after_it_starts() {
    let receiver = Receiver::start().await;
    let mut sidecar = Sidecar::start_with_env(&receiver, &[FOLDER_TRIGGERS, NO_RESCAN]).await;
    assert_eq!(sidecar.terminate().code(), Some(0));
    // Rails made the folder and its inputs while the sidecar was down; the trigger comes later.
    let mut early = trigger(&receiver, "ticker");
    early["params"] = json!({"count": 1});
    let early_dir = sidecar.write_job(&early);
    let sidecar = sidecar.restart();
    // Once a folder made after the start is answered, the watcher and its first rescan ran.
    let mut probe = trigger(&receiver, "ticker");
    probe["params"] = json!({"count": 1});
    drop_trigger(&sidecar, &probe);
    response(&sidecar, probe["job_id"].as_str().unwrap()).await;
    let tmp = early_dir.join("input/.trigger.json.tmp");
    std::fs::write(&tmp, early.to_string()).unwrap();
    std::fs::rename(&tmp, early_dir.join("input/trigger.json")).unwrap();
    let id = early["job_id"].as_str().unwrap();
    assert_eq!(response(&sidecar, id).await["status"], "queued");
    assert_eq!(receiver.completion(id).await.json()["status"], "completed");
}

#[tokio::test]
async fn trigger_files_written_while_the_sidecar_is_stopped_run_once_after_it_starts() {
    let receiver = Receiver::start().await;
    let mut sidecar = Sidecar::start_with_env(&receiver, &[FOLDER_TRIGGERS, NO_RESCAN]).await;
    assert_eq!(sidecar.terminate().code(), Some(0));
    let mut ids = Vec::new();
    for _ in 0..5 {
        let mut body = trigger(&receiver, "ticker");
        body["params"] = json!({"count": 1});
        drop_trigger(&sidecar, &body);
        ids.push(body["job_id"].as_str().unwrap().to_owned());
    }
    let sidecar = sidecar.restart();
    for id in &ids {
        assert_eq!(receiver.completion(id).await.json()["status"], "completed");
        assert_eq!(response(&sidecar, id).await["status"], "queued");
    }
    assert_eq!(receiver.hits("/completion").len(), 5);
}

#[tokio::test]
async fn jobs_tail_follows_events_jsonl_live_until_the_completion_is_delivered() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let mut body = trigger(&receiver, "ticker");
    body["params"] = json!({"count": 5, "interval": 0.1});
    sidecar.write_job(&body);
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    let tail = std::process::Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(["jobs", "tail", &job_id, "--config"])
        .arg(&sidecar.config_path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(sidecar.post_trigger(&body).await.0, 202);
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::task::spawn_blocking(move || tail.wait_with_output().unwrap()),
    )
    .await
    .expect("jobs tail ends once the completion is delivered")
    .unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let states: Vec<&str> = lines.iter().filter_map(|l| l["state"].as_str()).collect();
    assert_eq!(states, ["received", "queued", "in_progress", "completed"]);
    assert_eq!(lines.iter().filter(|l| l["type"] == "progress").count(), 5);
    assert_eq!(lines.last().unwrap()["outcome"], "delivered");
}

#[tokio::test]
async fn editing_the_config_file_adds_an_agent_without_a_restart_and_a_broken_file_changes_nothing()
{
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let script = repo().join("tests/agents/ticker.py");
    let mut body = trigger(&receiver, "late_agent");
    body["params"] = json!({"count": 1});
    sidecar.write_job(&body);
    let (status, problem) = sidecar.post_trigger(&body).await;
    assert_eq!(status, 422, "{problem}");

    let added = format!(
        "\n[agents.late_agent]\ncommand = [\"python3\", {:?}]\ntimeout = \"10s\"\n",
        script.display().to_string()
    );
    let config = std::fs::read_to_string(&sidecar.config_path).unwrap();
    std::fs::write(&sidecar.config_path, format!("{config}{added}")).unwrap();
    eventually("the new agent to be accepted", || async {
        (sidecar.post_trigger(&body).await.0 == 202).then_some(())
    })
    .await;
    let job_id = body["job_id"].as_str().unwrap();
    assert_eq!(
        receiver.completion(job_id).await.json()["status"],
        "completed"
    );

    std::fs::write(
        &sidecar.config_path,
        format!("{config}{added}\n[agents.broken\n"),
    )
    .unwrap();
    eventually("the broken file to be refused", || async {
        sidecar
            .log()
            .lines()
            .any(|l| l.contains("reload refused"))
            .then_some(())
    })
    .await;
    let mut again = trigger(&receiver, "late_agent");
    again["params"] = json!({"count": 1});
    sidecar.write_job(&again);
    assert_eq!(
        sidecar.post_trigger(&again).await.0,
        202,
        "the registry in force stays"
    );
}

#[tokio::test]
async fn a_job_folder_that_is_a_symlink_out_of_shared_root_is_never_triggered() {
    let receiver = Receiver::start().await;
    let mut sidecar = Sidecar::start_with_env(&receiver, &[FOLDER_TRIGGERS, NO_RESCAN]).await;
    assert_eq!(sidecar.terminate().code(), Some(0));
    // A real trigger, and a folder elsewhere reached through a symlink in shared_root.
    let mut real = trigger(&receiver, "ticker");
    real["params"] = json!({"count": 1});
    drop_trigger(&sidecar, &real);
    let outside = tempfile::tempdir().unwrap();
    let mut lured = trigger(&receiver, "ticker");
    lured["params"] = json!({"count": 1});
    let lured_id = lured["job_id"].as_str().unwrap().to_owned();
    let staged = drop_trigger_at(&sidecar, &lured);
    std::fs::rename(&staged, outside.path().join("job")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("job"), sidecar.job_dir(&lured_id)).unwrap();

    let sidecar = sidecar.restart();
    let real_id = real["job_id"].as_str().unwrap();
    receiver.completion(real_id).await;
    assert_eq!(response(&sidecar, real_id).await["status"], "queued");
    assert!(
        !outside.path().join("job/output").exists(),
        "nothing is written through the symlink"
    );
    assert_eq!(sidecar.get(&format!("/jobs/{lured_id}")).await.0, 404);
}

/// Like [`drop_trigger`], returning the folder (to be moved elsewhere).
fn drop_trigger_at(sidecar: &Sidecar, body: &Value) -> std::path::PathBuf {
    drop_trigger(sidecar, body);
    sidecar.job_dir(body["job_id"].as_str().unwrap())
}

/// Makes `dir` look older than the watcher's window, so only a rescan can find what lands in it.
fn age(dir: &std::path::Path) {
    let status = std::process::Command::new("touch")
        .args(["-d", "30 minutes ago"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

fn rename_in(job_dir: &std::path::Path, text: &str) {
    let tmp = job_dir.join("input/.trigger.json.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, job_dir.join("input/trigger.json")).unwrap();
}

/// A sidecar rescanning every 200 ms, stopped: folders written now are not seen being made,
/// and aged past the watch window they are not watched after the restart either.
async fn stopped_rescanner(receiver: &Receiver) -> Sidecar {
    let rescan = ("STORAGE__RESCAN_INTERVAL", "200ms");
    let mut sidecar = Sidecar::start_with_env(receiver, &[FOLDER_TRIGGERS, rescan]).await;
    sidecar.terminate();
    sidecar
}

#[tokio::test]
async fn the_rescan_takes_a_trigger_the_watcher_missed_and_a_replaced_one_again() {
    let receiver = Receiver::start().await;
    let stopped = stopped_rescanner(&receiver).await;
    let mut body = trigger(&receiver, "ticker");
    body["params"] = json!({"count": 1, "interval": 0});
    let job_dir = stopped.write_job(&body);
    age(&job_dir);
    let sidecar = stopped.restart();
    let mut wrong = body.clone();
    wrong["job_name"] = json!("NotAllowedJob");
    rename_in(&job_dir, &wrong.to_string());
    let job_id = body["job_id"].as_str().unwrap();
    let problem = response(&sidecar, job_id).await;
    assert_eq!(problem["status"], 422, "{problem}");

    // Replaced with a valid trigger: taken again, and the job runs.
    rename_in(&job_dir, &body.to_string());
    let answer = eventually("the replaced trigger's answer", || async {
        let a = response(&sidecar, job_id).await;
        (a["job_id"] == job_id).then_some(a)
    })
    .await;
    assert!(answer["status"].is_string(), "{answer}");
    assert_eq!(
        receiver.completion(job_id).await.json()["status"],
        "completed"
    );
}

#[tokio::test]
async fn the_rescan_ignores_folders_not_named_by_a_job_id() {
    let receiver = Receiver::start().await;
    let stopped = stopped_rescanner(&receiver).await;
    let body = trigger(&receiver, "ticker");
    let mut strays = Vec::new();
    for name in [
        "not-a-job",
        "7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f.bak",
        "{}",
    ] {
        let dir = stopped.shared_root.join(name);
        std::fs::create_dir_all(dir.join("input")).unwrap();
        std::fs::write(dir.join("input/manifest.json"), "{}").unwrap();
        rename_in(&dir, &body.to_string());
        age(&dir);
        strays.push(dir);
    }
    let sidecar = stopped.restart();
    // A job dropped after the restart: its watch event is handled only after the start's
    // rescan over every folder has finished, so once it has run the strays were passed.
    let mut real = trigger(&receiver, "ticker");
    real["params"] = json!({"count": 1, "interval": 0});
    let real_dir = sidecar.write_job(&real);
    rename_in(&real_dir, &real.to_string());
    receiver.completion(real["job_id"].as_str().unwrap()).await;
    for dir in &strays {
        assert!(
            !dir.join("output").exists(),
            "{} was answered",
            dir.display()
        );
    }
    let stray_id = body["job_id"].as_str().unwrap();
    assert_eq!(sidecar.get(&format!("/jobs/{stray_id}")).await.0, 404);
}
