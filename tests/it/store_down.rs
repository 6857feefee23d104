//! A store that cannot be reached or written is a 503 with `Retry-After` on every endpoint that
//! needs it, never a 500: Rails retries a 503 and pages on a 500 (issue 23, item 7).

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::ops::ReadOnly;

/// Asserts that `method path` answers 503 with `Retry-After` and a problem document.
async fn assert_unavailable(sidecar: &Sidecar, method: Method, path: &str, body: Option<&Value>) {
    let mut request = client()
        .request(method.clone(), format!("{}{path}", sidecar.base))
        // What a WebSocket client sends; the other endpoints ignore it.
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13");
    if path.ends_with("/watch") {
        request = request
            .header("connection", "upgrade")
            .header("upgrade", "websocket");
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").cloned();
    let text = response.text().await.unwrap();
    assert_eq!(status, 503, "{method} {path}: {text}");
    assert!(retry_after.is_some(), "{method} {path} has no Retry-After");
    let problem: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(problem["type"], "urn:agent-sidecar:problem:unavailable");
}

#[tokio::test]
async fn writes_are_503_with_retry_after_when_the_sqlite_file_refuses_them() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let running = start_job(&sidecar, &receiver, "napper", json!({"seconds": 30})).await;
    wait_state(&sidecar, &running, "in_progress").await;
    let fresh = trigger(&receiver, "napper");
    sidecar.write_job(&fresh);
    let db = sidecar.dir.path().join("state.db");
    let files = ["", "-wal", "-shm"].map(|suffix| format!("{}{suffix}", db.display()));
    // Immutable files refuse even root's writes through descriptors already open.
    let _guards: Vec<ReadOnly> = files
        .iter()
        .map(|f| ReadOnly::new(std::path::Path::new(f)))
        .collect();
    assert_unavailable(&sidecar, Method::POST, "/agents/trigger", Some(&fresh)).await;
    let cancel = format!("/jobs/{running}/cancel");
    assert_unavailable(&sidecar, Method::POST, &cancel, None).await;
}

use crate::fleet::test_postgres;

/// Closes every connection to database `url` and refuses new ones: to the sidecar, a stopped
/// server, without stopping the one the other tests share.
async fn shut_out(url: &str) {
    let name = url::Url::parse(url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_owned();
    let (admin, connection) =
        tokio_postgres::connect(&test_postgres::test_server(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await
        .unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs AGENT_SIDECAR_TEST_POSTGRES_URL (.ci/run starts a server)"
)]
async fn every_endpoint_that_reads_the_store_is_503_with_retry_after_when_postgres_is_down() {
    let url = test_postgres::fresh_database(&test_postgres::test_server(), "down").await;
    let receiver = Receiver::start().await;
    let root = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start_node(&receiver.origin, root.path(), &[("STORE__URL", &url)], "");
    let job = start_job(&sidecar, &receiver, "napper", json!({"seconds": 30})).await;
    let fresh = trigger(&receiver, "napper");
    sidecar.write_job(&fresh);
    shut_out(&url).await;
    let get = |path: String| (Method::GET, path, None);
    let post = |path: String, body: Option<&Value>| (Method::POST, path, body.cloned());
    for (method, path, body) in [
        post("/agents/trigger".into(), Some(&fresh)),
        get(format!("/jobs/{job}")),
        get(format!("/status/{job}")),
        get("/jobs".into()),
        post(format!("/jobs/{job}/cancel"), None),
        get(format!("/jobs/{job}/events")),
        get(format!("/jobs/{job}/watch")),
        get("/deliveries".into()),
        get("/deliveries/dlv_0".into()),
        post("/deliveries/redrive".into(), None),
        post("/deliveries/dlv_0/redrive".into(), None),
        post("/deliveries/dlv_0/deliver".into(), None),
        get("/metrics".into()),
        get("/nodes".into()),
    ] {
        assert_unavailable(&sidecar, method, &path, body.as_ref()).await;
    }
}
