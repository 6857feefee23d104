//! The OpenAPI document and the server agree: what the document calls valid is accepted, what
//! the server refuses the document does not allow (issue 23, item 9; `.ci/schemathesis` checks
//! the rest with schemathesis's positive-data check).

use serde_json::{Value, json};

use crate::helpers::*;

/// The operation `method path` of the served document.
fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    op
}

/// The parameter `name` in `location` of an operation.
fn parameter<'a>(op: &'a Value, location: &str, name: &str) -> &'a Value {
    op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["in"] == location && p["name"].as_str().unwrap().eq_ignore_ascii_case(name))
        .unwrap_or_else(|| panic!("no {location} parameter {name} in {op:#}"))
}

#[tokio::test]
async fn the_document_refuses_what_the_server_refuses_and_the_server_takes_what_it_allows() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let (_, doc) = sidecar.get("/openapi.json").await;

    // `params: null` is refused by the trigger schema, so the document must not allow it.
    let params = &doc["components"]["schemas"]["TriggerRequest"]["properties"]["params"];
    assert_eq!(params["type"], "object", "{params}");
    let mut body = trigger(&receiver, "summarizer_v2");
    body["params"] = Value::Null;
    sidecar.write_job(&body);
    assert_eq!(sidecar.post_trigger(&body).await.0, 422);

    // Only dead deliveries are redriven: `state` offers only `dead`.
    let redrive = operation(&doc, "post", "/deliveries/redrive");
    let state = &parameter(redrive, "query", "state")["schema"];
    assert_eq!(state["pattern"], "^dead$", "{state}");
    let (status, answer) = sidecar
        .post_raw("/deliveries/redrive?state=pending", vec![])
        .await;
    assert_eq!(status, 422, "{answer}");

    // A WebSocket watch needs its upgrade headers; the document says so.
    let watch = operation(&doc, "get", "/jobs/{job_id}/watch");
    for header in [
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
    ] {
        assert_eq!(
            parameter(watch, "header", header)["required"],
            true,
            "{header}"
        );
    }

    // An empty `Last-Event-ID` is no cursor (what an EventSource without one sends): a replay.
    let job_id = start_job(&sidecar, &receiver, "ticker", json!({"count": 1})).await;
    wait_state(&sidecar, &job_id, "completed").await;
    let response = client()
        .get(format!("{}/jobs/{job_id}/events", sidecar.base))
        .header("Last-Event-ID", "")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("id: 1\n") || text.contains("id:1\n"),
        "{text}"
    );
}
