//! A job's files over HTTP: `GET /jobs/{id}/artifacts/{path}` and `/jobs/{id}/output/{name}`
//! serve the bytes with the completion's SHA-256 as `ETag`, ranges and revalidation, never
//! through a link or a FIFO nor out of the folder, only to callers who may see the job; the
//! completion links each artifact and inlines the small ones when asked.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RANGE};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::*;

const SECRET: &str = "artifact-secret-0123456789abcdef-0123456789";

fn agent_toml() -> String {
    let script = repo().join("tests/agents/artifacts.py");
    format!(
        "\n[agents.artifact_maker]\ncommand = [\"python3\", {:?}]\ntimeout = \"60s\"\n",
        script.display().to_string()
    )
}

fn sha256(bytes: &[u8]) -> String {
    agent_sidecar::jobdir::hex(&Sha256::digest(bytes))
}

/// Runs the artifact agent with `params`; its completion's body.
async fn completed(sidecar: &Sidecar, receiver: &Receiver, params: Value) -> Value {
    let mut body = trigger(receiver, "artifact_maker");
    body["params"] = params;
    let done = run_job(sidecar, receiver, &body).await.json();
    assert_eq!(done["status"], "completed", "{done}");
    done
}

fn artifact<'a>(done: &'a Value, path: &str) -> &'a Value {
    done["output_index"]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["path"] == path)
        .unwrap_or_else(|| panic!("no {path} in {done}"))
}

async fn get(url: &str, headers: &[(reqwest::header::HeaderName, &str)]) -> reqwest::Response {
    let mut request = client().get(url);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    request.send().await.unwrap()
}

/// Asserts a 422 problem naming `pointer` in the path, saying `says`.
async fn assert_refused(response: reqwest::Response, pointer: &str, says: &str) {
    assert_eq!(response.status(), 422, "{}", response.url());
    let problem: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    let errors = problem["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["source"] == "path"
            && e["pointer"] == pointer
            && e["detail"].as_str().unwrap().contains(says)),
        "no {pointer} saying {says:?} in {problem}"
    );
}

#[tokio::test]
async fn each_artifact_is_served_at_its_url_with_its_sha256_ranges_and_revalidation() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &agent_toml()).await;
    let done = completed(&sidecar, &receiver, json!({})).await;
    let job_id = done["job_id"].as_str().unwrap();
    let output = sidecar.job_dir(job_id).join("output");
    for path in [
        "artifacts/report.md",
        "artifacts/big.bin",
        "artifacts/sub dir/data.json",
    ] {
        let entry = artifact(&done, path);
        let url = entry["url"].as_str().unwrap();
        let encoded = path.replace(' ', "%20");
        assert_eq!(url, format!("{}/jobs/{job_id}/{encoded}", sidecar.base));
        assert!(entry.get("content_base64").is_none(), "not asked: {entry}");
        let response = get(url, &[]).await;
        assert_eq!(response.status(), 200, "{path}");
        let etag = format!("\"{}\"", entry["sha256"].as_str().unwrap());
        assert_eq!(response.headers()[ETAG], etag.as_str());
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            entry["mime"].as_str().unwrap()
        );
        let bytes = response.bytes().await.unwrap();
        assert_eq!(bytes, std::fs::read(output.join(path)).unwrap(), "{path}");
        assert_eq!(sha256(&bytes), entry["sha256"]);
        let again = get(url, &[(IF_NONE_MATCH, &etag)]).await;
        assert_eq!(again.status(), 304, "{path}");
        assert!(again.bytes().await.unwrap().is_empty());
    }

    let big = artifact(&done, "artifacts/big.bin")["url"]
        .as_str()
        .unwrap();
    let part = get(big, &[(RANGE, "bytes=0-9")]).await;
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()[CONTENT_RANGE], "bytes 0-9/100000");
    let expected: Vec<u8> = (0..10).collect();
    assert_eq!(part.bytes().await.unwrap(), expected);
    let outside = get(big, &[(RANGE, "bytes=100000-")]).await;
    assert_eq!(outside.status(), 416);
    assert_eq!(outside.headers()[CONTENT_RANGE], "bytes */100000");

    let summary = format!("{}/jobs/{job_id}/output/summary.json", sidecar.base);
    let response = get(&summary, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    let etag = response.headers()[ETAG].to_str().unwrap().to_owned();
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes, std::fs::read(output.join("summary.json")).unwrap());
    assert_eq!(etag, format!("\"{}\"", sha256(&bytes)));
    let log = get(
        &format!("{}/jobs/{job_id}/output/log.txt", sidecar.base),
        &[],
    )
    .await;
    assert_eq!(log.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
    let other = get(
        &format!("{}/jobs/{job_id}/output/status.json", sidecar.base),
        &[],
    )
    .await;
    assert_eq!(other.status(), 404);
}

#[tokio::test]
async fn a_symlink_a_fifo_and_a_path_out_of_the_folder_are_refused_naming_the_path() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &agent_toml()).await;
    let done = completed(&sidecar, &receiver, json!({})).await;
    let job_id = done["job_id"].as_str().unwrap();
    let base = format!("{}/jobs/{job_id}", sidecar.base);
    let rejected = done["output_index"]["rejected_artifacts"].to_string();
    assert!(rejected.contains("artifacts/passwd") && rejected.contains("artifacts/pipe"));

    let link = get(&format!("{base}/artifacts/passwd"), &[]).await;
    assert_refused(link, "/path", "is a symlink").await;
    let fifo = get(&format!("{base}/artifacts/pipe"), &[]).await;
    assert_refused(fifo, "/path", "is not a regular file").await;
    // The slashes encoded, so the client does not resolve the dots itself.
    let up = format!("{base}/artifacts/..%2F..%2Finput%2Fmanifest.json");
    assert_refused(get(&up, &[]).await, "/path", "not a plain relative path").await;
    // A symlinked output/ is refused as a whole, and its target never read.
    let folder = sidecar.job_dir(job_id);
    std::fs::rename(folder.join("output"), folder.join("moved")).unwrap();
    std::os::unix::fs::symlink(folder.join("moved"), folder.join("output")).unwrap();
    let through = get(&format!("{base}/artifacts/report.md"), &[]).await;
    assert_refused(through, "/path", "output is a symlink").await;
    let summary = get(&format!("{base}/output/summary.json"), &[]).await;
    assert_refused(summary, "/name", "output is a symlink").await;
    let missing = get(&format!("{base}/artifacts/nothing.txt"), &[]).await;
    assert_eq!(missing.status(), 422, "through the link, still refused");
    let unknown = format!(
        "{}/jobs/{}/artifacts/a.txt",
        sidecar.base,
        uuid::Uuid::new_v4()
    );
    assert_eq!(get(&unknown, &[]).await.status(), 404);
}

#[tokio::test]
async fn small_artifacts_are_inlined_with_their_sha256_when_the_agent_asks() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &agent_toml()).await;
    let done = completed(&sidecar, &receiver, json!({"inline": true})).await;
    let output = sidecar
        .job_dir(done["job_id"].as_str().unwrap())
        .join("output");
    for path in ["artifacts/report.md", "artifacts/sub dir/data.json"] {
        let entry = artifact(&done, path);
        let text = entry["content_base64"]
            .as_str()
            .unwrap_or_else(|| panic!("{entry}"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        assert_eq!(bytes, std::fs::read(output.join(path)).unwrap());
        assert_eq!(sha256(&bytes), entry["sha256"]);
    }
    let big = artifact(&done, "artifacts/big.bin");
    assert!(
        big.get("content_base64").is_none(),
        "100000 bytes is above 64 KiB"
    );
    assert!(big["url"].is_string());
}

#[tokio::test]
async fn a_token_scoped_to_another_agent_cannot_read_the_jobs_files() {
    let receiver = Receiver::start().await;
    let auth = format!(
        "\n[server.auth]\nissuer = \"rails\"\naudience = \"agent-sidecar\"\nsecret = \"{SECRET}\"\n"
    );
    let sidecar = Sidecar::start_with(&receiver, &[], &(agent_toml() + &auth)).await;
    let token = |agents: Value| {
        let exp = jsonwebtoken::get_current_timestamp() + 300;
        let mut claims =
            json!({"iss": "rails", "aud": "agent-sidecar", "sub": "rails", "exp": exp});
        if !agents.is_null() {
            claims["agents"] = agents;
        }
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    };
    let own = token(json!(["artifact_maker"]));
    let body = trigger(&receiver, "artifact_maker");
    sidecar.write_job(&body);
    let answer = client()
        .post(format!("{}/agents/trigger", sidecar.base))
        .bearer_auth(&own)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let done = receiver
        .completion(body["job_id"].as_str().unwrap())
        .await
        .json();
    let url = artifact(&done, "artifacts/report.md")["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = |token: Option<String>| {
        let url = url.clone();
        async move {
            let mut request = client().get(url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(read(None).await, 401);
    assert_eq!(read(Some(token(json!(["ticker"])))).await, 404);
    assert_eq!(read(Some(own)).await, 200);
    assert_eq!(read(Some(token(json!(null)))).await, 200, "unscoped");
}
