//! `POST /agents/trigger`: every rejection names its field; valid triggers are durable and
//! idempotent.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// Asserts a 4xx problem+json whose `errors` name `pointer` in `source`.
fn assert_names(answer: &Value, source: &str, pointer: &str) {
    let errors = answer["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {answer}"));
    assert!(
        errors
            .iter()
            .any(|e| e["source"] == source && e["pointer"] == pointer),
        "expected {source} {pointer} in {answer:#}"
    );
    assert!(answer["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

async fn setup() -> (Receiver, Sidecar) {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    (receiver, sidecar)
}

#[tokio::test]
async fn malformed_json_is_400_problem() {
    let (_r, sidecar) = setup().await;
    let (status, answer) = sidecar
        .post_raw("/agents/trigger", b"{\"job_id\": ".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_names(&answer, "request", "");
}

#[tokio::test]
async fn a_missing_field_is_422_naming_it() {
    let (r, sidecar) = setup().await;
    let mut body = trigger(&r, "summarizer_v2");
    body.as_object_mut().unwrap().remove("job_name");
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "request", "/job_name");
}

#[tokio::test]
async fn a_job_id_that_is_not_a_uuid_is_422_naming_it() {
    let (r, sidecar) = setup().await;
    let mut body = trigger(&r, "summarizer_v2");
    body["job_id"] = json!("../../etc");
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "request", "/job_id");
}

#[tokio::test]
async fn an_unknown_agent_is_422_listing_the_known_ones() {
    let (r, sidecar) = setup().await;
    let body = trigger(&r, "no_such_agent");
    sidecar.write_job(&body);
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "request", "/agent_name");
    assert!(answer.to_string().contains("summarizer_v2"), "{answer}");
}

#[tokio::test]
async fn a_job_name_outside_the_allowlist_is_422() {
    let (r, sidecar) = setup().await;
    let mut body = trigger(&r, "summarizer_v2");
    body["job_name"] = json!("DropTablesJob");
    sidecar.write_job(&body);
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "request", "/job_name");
}

#[tokio::test]
async fn a_callback_origin_outside_the_allowlist_is_422_and_never_called() {
    let (r, sidecar) = setup().await;
    let mut body = trigger(&r, "summarizer_v2");
    body["callback_urls"]["completion"] = json!("http://169.254.169.254/latest/meta-data");
    sidecar.write_job(&body);
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "request", "/callback_urls/completion");
    let (status, _) = sidecar
        .get(&format!("/jobs/{}", body["job_id"].as_str().unwrap()))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused trigger stores nothing"
    );
}

#[tokio::test]
async fn params_violating_the_agent_params_schema_are_422() {
    let (r, sidecar) = setup().await;
    let mut body = trigger(&r, "summarizer_v2");
    body["params"] = json!({"max_sentences": 500});
    sidecar.write_job(&body);
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "request", "/params/max_sentences");
}

#[tokio::test]
async fn a_missing_manifest_is_422_naming_the_manifest() {
    let (r, sidecar) = setup().await;
    let body = trigger(&r, "summarizer_v2");
    let job_dir = sidecar.write_job(&body);
    std::fs::remove_file(job_dir.join("input/manifest.json")).unwrap();
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "manifest", "");
    let detail = answer["errors"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("does not exist"), "{answer}");
    let looked = sidecar
        .shared_root
        .canonicalize()
        .unwrap()
        .join(body["job_id"].as_str().unwrap())
        .join("input/manifest.json");
    assert!(
        detail.contains(&format!("(looked for {})", looked.display())),
        "{answer}"
    );
}

/// Issue 18: a job id is case-insensitive and its folder is the lower-case id; an upper-case id
/// whose folder was written as sent is told so, at `/job_id`.
#[tokio::test]
async fn an_upper_case_job_id_uses_the_lower_case_folder_and_says_so_when_it_is_missing() {
    let (r, sidecar) = setup().await;
    let mut body = trigger(&r, "summarizer_v2");
    let lower = body["job_id"].as_str().unwrap().to_owned();
    let upper = lower.to_ascii_uppercase();
    body["job_id"] = json!(upper);
    let mut manifest_body = body.clone();
    manifest_body["job_id"] = json!(upper);
    // Written as sent: the folder the sidecar looks for is the lower-case one.
    let written = sidecar.write_job(&manifest_body);
    assert!(written.ends_with(&upper));
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_names(&answer, "request", "/job_id");
    let detail = answer["errors"][0]["detail"].as_str().unwrap();
    let looked = sidecar.shared_root.canonicalize().unwrap().join(&lower);
    assert_eq!(
        detail,
        format!(
            "no job folder {lower} in shared_root (a job folder is named by the job id in lower case; looked for {})",
            looked.join("input/manifest.json").display()
        )
    );
    std::fs::rename(&written, sidecar.job_dir(&lower)).unwrap();
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["job_id"], lower.as_str());
    assert_eq!(r.completion(&lower).await.json()["status"], "completed");
}

#[tokio::test]
async fn an_unparseable_manifest_is_422() {
    let (r, sidecar) = setup().await;
    let body = trigger(&r, "summarizer_v2");
    sidecar.write_manifest(body["job_id"].as_str().unwrap(), "{ not json");
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "manifest", "");
}

#[tokio::test]
async fn a_manifest_invalid_for_its_schema_is_422_naming_the_field() {
    let (r, sidecar) = setup().await;
    let body = trigger(&r, "summarizer_v2");
    let manifest = json!({"schema_version": 1, "job_id": body["job_id"], "user_id": "42", "agent_name": "summarizer_v2"});
    sidecar.write_manifest(body["job_id"].as_str().unwrap(), &manifest.to_string());
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "manifest", "/job_name");
}

#[tokio::test]
async fn a_manifest_of_an_unknown_schema_version_is_422_listing_known_versions() {
    let (r, sidecar) = setup().await;
    let body = trigger(&r, "summarizer_v2");
    let manifest = json!({"schema_version": 9, "job_id": body["job_id"], "user_id": "42", "agent_name": "summarizer_v2", "job_name": "ReportCompileJob"});
    sidecar.write_manifest(body["job_id"].as_str().unwrap(), &manifest.to_string());
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "manifest", "/schema_version");
    assert!(
        answer.to_string().contains("known versions: 1, 2"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_manifest_contradicting_the_request_is_422_naming_each_field() {
    let (r, sidecar) = setup().await;
    let body = trigger(&r, "summarizer_v2");
    let manifest = json!({"schema_version": 1, "job_id": body["job_id"], "user_id": "7", "agent_name": "summarizer_v2", "job_name": "OtherJob"});
    sidecar.write_manifest(body["job_id"].as_str().unwrap(), &manifest.to_string());
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "manifest", "/user_id");
    assert_names(&answer, "manifest", "/job_name");
}

#[tokio::test]
async fn a_body_over_the_size_limit_is_413() {
    let (r, sidecar) = setup().await;
    let mut body = trigger(&r, "summarizer_v2");
    body["params"] = json!({"blob": "x".repeat(20_000)});
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer["status"], 413);
    // Issue 23: the problem names the setting and its limit, not axum's "Failed to buffer".
    let detail = answer["detail"].as_str().unwrap();
    assert!(
        detail.contains("max_body_bytes") && detail.contains("8192"),
        "{answer}"
    );
    assert_names(&answer, "request", "");
    assert!(
        answer["errors"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("max_body_bytes") && d.contains("8192")),
        "{answer}"
    );
}

/// Issue 23: a browser may send `text/plain` cross-origin without a preflight; only JSON is
/// taken, and the refusal names the header.
#[tokio::test]
async fn a_trigger_that_is_not_application_json_is_415_naming_the_content_type() {
    let (r, sidecar) = setup().await;
    let body = trigger(&r, "summarizer_v2");
    sidecar.write_job(&body);
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = client()
            .post(format!("{}/agents/trigger", sidecar.base))
            .body(serde_json::to_vec(&body).unwrap());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 415, "{content_type:?}");
        let answer: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_names(&answer, "header", "/Content-Type");
    }
    let (status, job) = sidecar
        .get(&format!("/jobs/{}", body["job_id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was queued: {job}");
    let response = client()
        .post(format!("{}/agents/trigger", sidecar.base))
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "JSON with parameters is JSON");
}

#[tokio::test]
async fn a_job_folder_symlinked_out_of_shared_root_is_refused() {
    let (r, sidecar) = setup().await;
    let body = trigger(&r, "summarizer_v2");
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(outside.path().join("input")).unwrap();
    let manifest = json!({"schema_version": 1, "job_id": body["job_id"], "user_id": "42", "agent_name": "summarizer_v2", "job_name": "ReportCompileJob"});
    std::fs::write(
        outside.path().join("input/manifest.json"),
        manifest.to_string(),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        outside.path(),
        sidecar.job_dir(body["job_id"].as_str().unwrap()),
    )
    .unwrap();
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        answer["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("symlink"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_valid_trigger_is_202_queued_with_a_status_url() {
    let (r, sidecar) = setup().await;
    let body = trigger(&r, "sleeper");
    sidecar.write_job(&body);
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let job_id = body["job_id"].as_str().unwrap();
    assert_eq!(answer["job_id"], job_id);
    assert_eq!(answer["status"], "queued");
    assert_eq!(
        answer["status_url"],
        format!("{}/jobs/{job_id}", sidecar.base)
    );
}

#[tokio::test]
async fn the_same_trigger_twice_runs_once_and_a_different_body_is_409() {
    let (r, sidecar) = setup().await;
    let body = trigger(&r, "summarizer_v2");
    let completion = run_job(&sidecar, &r, &body).await;
    let (status, again) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        again["status"],
        completion.json()["status"],
        "a replay reports the current state"
    );

    let mut changed = body.clone();
    changed["user_id"] = json!("43");
    let (status, conflict) = sidecar.post_trigger(&changed).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(conflict["state"], "completed");

    let (_, job) = sidecar
        .get(&format!("/jobs/{}", body["job_id"].as_str().unwrap()))
        .await;
    assert_eq!(job["attempt"], 1, "ran once: {job}");
    let log = std::fs::read_to_string(
        sidecar
            .job_dir(body["job_id"].as_str().unwrap())
            .join("output/log.txt"),
    )
    .unwrap();
    assert_eq!(log.matches("started: pid").count(), 1, "{log}");
    assert_eq!(r.hits("/completion").len(), 1);
}

#[tokio::test]
async fn an_unknown_job_is_404() {
    let (_r, sidecar) = setup().await;
    let (status, answer) = sidecar
        .get(&format!("/jobs/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(answer["status"], 404);
    let (status, _) = sidecar.get("/status/not-a-uuid").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// A v2 manifest whose `inputs` list `notes.txt` (as `write_manifest` writes it) with `sha256`.
fn manifest_v2(body: &Value, sha256: &str) -> String {
    let notes = b"The quarter went well. Revenue grew. Costs fell.\n";
    json!({
        "schema_version": 2,
        "job_id": body["job_id"],
        "user_id": body["user_id"],
        "agent_name": body["agent_name"],
        "job_name": body["job_name"],
        "inputs": [{"path": "notes.txt", "bytes": notes.len(), "sha256": sha256, "media_type": "text/plain"}]
    })
    .to_string()
}

/// Well-formed, but not the digest of `notes.txt`.
const WRONG_SHA256: &str = "0a9e1d7c2c6a4f4e2b8b8a3c7cf57e4c2b7e5e7a4c3f7f1c9b6d8a0e2f4c6b8a";

#[tokio::test]
async fn v1_and_v2_manifests_are_accepted_side_by_side() {
    let (r, sidecar) = setup().await;
    let notes = b"The quarter went well. Revenue grew. Costs fell.\n";
    let sha = agent_sidecar::jobdir::hex(&<sha2::Sha256 as sha2::Digest>::digest(notes));
    let v2 = trigger(&r, "summarizer_v2");
    sidecar.write_manifest(v2["job_id"].as_str().unwrap(), &manifest_v2(&v2, &sha));
    let v1 = trigger(&r, "summarizer_v2");
    sidecar.write_job(&v1);
    for body in [&v2, &v1] {
        let (status, answer) = sidecar.post_trigger(body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }
    for body in [&v2, &v1] {
        let done = r.completion(body["job_id"].as_str().unwrap()).await;
        assert_eq!(done.json()["status"], "completed", "{}", done.json());
    }
}

#[tokio::test]
async fn a_v2_input_whose_sha256_differs_is_422_naming_the_input() {
    let (r, sidecar) = setup().await;
    let body = trigger(&r, "summarizer_v2");
    let id = body["job_id"].as_str().unwrap();
    sidecar.write_manifest(id, &manifest_v2(&body, WRONG_SHA256));
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "manifest", "/inputs/0/sha256");
    assert!(answer.to_string().contains("notes.txt"), "{answer}");
    let (status, _) = sidecar.get(&format!("/jobs/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a refused job is not stored");
}

#[tokio::test]
async fn a_v2_input_that_is_missing_or_a_symlink_is_422_naming_its_path() {
    let (r, sidecar) = setup().await;
    let body = trigger(&r, "summarizer_v2");
    let dir = sidecar.write_manifest(
        body["job_id"].as_str().unwrap(),
        &manifest_v2(&body, WRONG_SHA256),
    );
    std::fs::remove_file(dir.join("input/notes.txt")).unwrap();
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "manifest", "/inputs/0/path");
    std::os::unix::fs::symlink("/etc/passwd", dir.join("input/notes.txt")).unwrap();
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "manifest", "/inputs/0/path");
    assert!(answer.to_string().contains("symlink"), "{answer}");
}

#[tokio::test]
async fn a_v2_input_of_another_size_is_422_naming_bytes() {
    let (r, sidecar) = setup().await;
    let body = trigger(&r, "summarizer_v2");
    let mut manifest: Value = serde_json::from_str(&manifest_v2(&body, WRONG_SHA256)).unwrap();
    manifest["inputs"][0]["bytes"] = json!(1);
    sidecar.write_manifest(body["job_id"].as_str().unwrap(), &manifest.to_string());
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "manifest", "/inputs/0/bytes");
}

#[tokio::test]
async fn a_v2_input_behind_a_symlinked_folder_is_refused() {
    let (r, sidecar) = setup().await;
    let body = trigger(&r, "summarizer_v2");
    let mut manifest: Value = serde_json::from_str(&manifest_v2(&body, WRONG_SHA256)).unwrap();
    manifest["inputs"][0]["path"] = json!("sub/passwd");
    let dir = sidecar.write_manifest(body["job_id"].as_str().unwrap(), &manifest.to_string());
    std::os::unix::fs::symlink("/etc", dir.join("input/sub")).unwrap();
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_names(&answer, "manifest", "/inputs/0/path");
    assert!(answer.to_string().contains("symlink"), "{answer}");
}

/// The warn lines the sidecar logged about refused triggers, as JSON.
fn refusals_logged(sidecar: &Sidecar) -> Vec<Value> {
    sidecar
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| {
            entry["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("trigger refused"))
        })
        .collect()
}

/// Issue 23: an operator sees a misconfigured Rails from the sidecar: one warn line per
/// refused trigger (status, pointers, reasons; never a params value) and a counter per reason.
#[tokio::test]
async fn each_refused_trigger_is_logged_once_and_counted_by_reason() {
    let (r, sidecar) = setup().await;
    let secret_value = 987_654_321;
    let mut bad_name = trigger(&r, "summarizer_v2");
    bad_name["job_name"] = json!("NoSuchJob");
    let mut bad_params = trigger(&r, "summarizer_v2");
    bad_params["params"] = json!({"max_sentences": secret_value});
    let mut bad_origin = trigger(&r, "summarizer_v2");
    bad_origin["callback_urls"]["completion"] = json!("http://elsewhere.example/c");
    for body in [&bad_name, &bad_params, &bad_origin] {
        sidecar.write_job(body);
        let (status, answer) = sidecar.post_trigger(body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    }
    let (status, _) = sidecar.post_raw("/agents/trigger", b"{".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let logged = eventually("the refusals to be logged", || async {
        let logged = refusals_logged(&sidecar);
        (logged.len() >= 4).then_some(logged)
    })
    .await;
    assert_eq!(logged.len(), 4, "one line per refusal: {logged:#?}");
    for entry in &logged {
        assert_eq!(entry["level"], "WARN", "{entry}");
        assert!(entry["status"].as_u64().is_some(), "{entry}");
    }
    let text = serde_json::to_string(&logged).unwrap();
    for pointer in [
        "/job_name",
        "/params/max_sentences",
        "/callback_urls/completion",
    ] {
        assert!(text.contains(pointer), "{pointer} not logged: {text}");
    }
    assert!(
        text.contains("jobs.allowed_job_names"),
        "the reason is logged: {text}"
    );
    assert!(
        !text.contains(&secret_value.to_string()),
        "params values never reach the log: {text}"
    );
    for (reason, count) in [
        ("job_name", 1.0),
        ("params", 1.0),
        ("callback_urls", 1.0),
        ("malformed_json", 1.0),
    ] {
        let counted = metric(
            &sidecar,
            "agent_sidecar_triggers_refused_total",
            &[("reason", reason)],
        )
        .await;
        assert_eq!(counted, count, "{reason}");
    }
}
