//! Watching jobs: SSE and WebSocket watchers, replay, resume, slow watchers, STOP.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

/// One SSE event as received.
#[derive(Debug, Clone, PartialEq)]
struct Received {
    id: u64,
    event: String,
    data: Value,
}

/// Reads an SSE stream to its end (the server closes it after the terminal event).
async fn sse(sidecar: &Sidecar, job_id: &str, last_event_id: Option<u64>) -> Vec<Received> {
    let mut request = client().get(format!("{}/jobs/{job_id}/events", sidecar.base));
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    // One deadline for the whole stream: keep-alive comments never let a stuck one time out
    // chunk by chunk.
    let whole = async {
        let mut response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut text = String::new();
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        text
    };
    let text = tokio::time::timeout(PATIENCE, whole)
        .await
        .expect("the stream ends after the terminal event");
    parse_sse(&text)
}

fn parse_sse(text: &str) -> Vec<Received> {
    text.split("\n\n")
        .filter_map(|frame| {
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}:")))
                    .map(|v| v.trim_start().to_owned())
            };
            Some(Received {
                id: field("id")?.parse().unwrap(),
                event: field("event")?,
                data: serde_json::from_str(&field("data")?).unwrap(),
            })
        })
        .collect()
}

fn ws_url(sidecar: &Sidecar, job_id: &str) -> String {
    format!(
        "{}/jobs/{job_id}/watch",
        sidecar.base.replacen("http://", "ws://", 1)
    )
}

/// Collects a WebSocket watcher's events until the server closes it.
async fn ws_events(sidecar: &Sidecar, job_id: &str) -> Vec<Value> {
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(sidecar, job_id))
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Some(message) = tokio::time::timeout(PATIENCE, socket.next())
        .await
        .expect("the watch ends after the terminal event")
    {
        match message.unwrap() {
            Message::Text(text) => events.push(serde_json::from_str(&text).unwrap()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    events
}

#[tokio::test]
async fn two_sse_watchers_and_a_websocket_watcher_get_every_event_in_order_and_late_ones_the_replay()
 {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let job_id = start_job(
        &sidecar,
        &receiver,
        "ticker",
        json!({"count": 30, "interval": 0.02}),
    )
    .await;
    let (a, b, w) = tokio::join!(
        sse(&sidecar, &job_id, None),
        sse(&sidecar, &job_id, None),
        ws_events(&sidecar, &job_id)
    );
    receiver.completion(&job_id).await;
    let late = sse(&sidecar, &job_id, None).await;

    assert_eq!(a, b);
    assert_eq!(
        a, late,
        "a watcher arriving after the end gets the full replay"
    );
    let ids: Vec<u64> = a.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "no gap, in order"
    );
    assert_eq!(
        w,
        a.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        "the WebSocket watcher gets the same events"
    );
    for e in &a {
        assert_eq!(e.data["seq"], e.id);
        assert_eq!(e.data["type"], e.event);
        assert_valid("job-event.json", &e.data);
    }
    let states: Vec<&str> = a
        .iter()
        .filter(|e| e.event == "state")
        .map(|e| e.data["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["received", "queued", "in_progress", "completed"]);
    assert!(a.iter().any(|e| e.event == "progress"));
}

#[tokio::test]
async fn last_event_id_resumes_exactly_after_that_seq() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let job_id = start_job(&sidecar, &receiver, "ticker", json!({"count": 5})).await;
    let all = sse(&sidecar, &job_id, None).await;
    let middle = all[all.len() / 2].id;
    let resumed = sse(&sidecar, &job_id, Some(middle)).await;
    assert_eq!(resumed, all[all.len() / 2 + 1..].to_vec());
    let after_end = client()
        .get(format!("{}/jobs/{job_id}/events", sidecar.base))
        .header("Last-Event-ID", all.last().unwrap().id.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        after_end.status(),
        204,
        "resuming after the terminal event: nothing more, stop reconnecting"
    );
}

/// Connects a watcher of `job_id`'s SSE stream with a 4 KiB receive window that sends its
/// request and then reads nothing.
async fn stalled_watcher(sidecar: &Sidecar, job_id: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr = sidecar.base.trim_start_matches("http://").parse().unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "GET /jobs/{job_id}/events HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    stalled
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(response: &[u8]) -> Vec<u8> {
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole response head")
        + 4;
    let mut rest = &response[head_end..];
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = std::str::from_utf8(&rest[..line_end]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return body;
        }
        let data = &rest[line_end + 2..];
        body.extend_from_slice(&data[..size]);
        rest = &data[size + 2..];
    }
}

#[tokio::test]
async fn a_watcher_that_never_reads_delays_neither_the_agent_nor_other_watchers() {
    // A write timeout longer than the test's patience: the stalled watcher stays connected,
    // so a sidecar whose agent waited for it would never finish the job.
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(
        &receiver,
        &[
            ("SERVER__WRITE_TIMEOUT", "600s"),
            ("SERVER__SEND_BUFFER_BYTES", "4096"),
            // Every event stays in the history: the stalled watcher reads its rest from the
            // store after the end, and trimmed progress would differ from the live reader's.
            ("JOBS__EVENTS_PER_JOB", "5000"),
        ],
    )
    .await;
    let ticker = start_job(
        &sidecar,
        &receiver,
        "ticker",
        json!({"count": 1500, "interval": 0.002, "pad": 3000}),
    )
    .await;
    let mut stalled = stalled_watcher(&sidecar, &ticker).await;

    let reader = sse(&sidecar, &ticker, None).await;
    assert_eq!(
        reader.last().unwrap().data["state"],
        "completed",
        "a reading watcher gets everything while another stalls"
    );
    assert_eq!(
        receiver.completion(&ticker).await.json()["status"],
        "completed",
        "the job ended while the stalled watcher had read nothing"
    );

    // Only now does the stalled watcher read: it was connected all along and gets it all.
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, stalled.read_to_end(&mut got))
        .await
        .expect("the stream ends after the terminal event")
        .unwrap();
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
    let body = dechunk(&got);
    assert_eq!(
        parse_sse(std::str::from_utf8(&body).unwrap()),
        reader,
        "the stalled watcher was never dropped"
    );
    // The stream is larger than all a watcher can hold unread (one page of 256 events,
    // hyper's ~400 KiB write buffer and two socket buffers): when the job ended, the sidecar
    // was still blocked writing to the stalled watcher, and the agent and the other watcher
    // had gone on without it.
    let per_event = body.len() / reader.len();
    let unread_at_most = 256 * per_event + 420 * 1024 + 32 * 1024;
    assert!(
        body.len() > unread_at_most,
        "{} bytes in the stream, up to {unread_at_most} held unread",
        body.len()
    );
}

#[tokio::test]
async fn a_watcher_that_never_reads_is_disconnected_by_the_write_timeout() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(
        &receiver,
        &[
            ("SERVER__WRITE_TIMEOUT", "500ms"),
            ("SERVER__SEND_BUFFER_BYTES", "4096"),
        ],
    )
    .await;
    let ticker = start_job(
        &sidecar,
        &receiver,
        "ticker",
        json!({"count": 600, "interval": 0.003, "pad": 3000}),
    )
    .await;
    let mut stalled = stalled_watcher(&sidecar, &ticker).await;
    let reader = sse(&sidecar, &ticker, None).await;
    assert_eq!(reader.last().unwrap().data["state"], "completed");
    receiver.completion(&ticker).await;

    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, stalled.read_to_end(&mut got))
        .await
        .expect("the stalled watcher's connection is closed by the sidecar")
        .ok();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(
        !text.contains("\"state\":\"completed\""),
        "the stalled watcher was cut off before the end ({} bytes)",
        got.len()
    );
}

#[tokio::test]
async fn a_websocket_stop_cancels_the_job() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let job_id = start_job(&sidecar, &receiver, "napper", json!({})).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(&sidecar, &job_id))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut stopped = false;
    while let Some(message) = tokio::time::timeout(PATIENCE, socket.next())
        .await
        .expect("events keep coming until the job ends")
    {
        let Message::Text(text) = message.unwrap() else {
            continue;
        };
        let event: Value = serde_json::from_str(&text).unwrap();
        if event["state"] == "in_progress" && !stopped {
            socket
                .send(Message::Text(r#"{"signal":"STOP"}"#.into()))
                .await
                .unwrap();
            stopped = true;
        }
        seen.push(event);
    }
    assert!(
        seen.iter()
            .any(|e| e["type"] == "signal" && e["outcome"] == "stopping"),
        "{seen:?}"
    );
    assert_eq!(seen.last().unwrap()["state"], "canceled");
    assert_eq!(
        receiver.completion(&job_id).await.json()["status"],
        "canceled"
    );
}

#[tokio::test]
async fn watching_an_unknown_job_is_404_and_a_bad_last_event_id_names_the_header() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let (status, _) = sidecar
        .get(&format!("/jobs/{}/events", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, 404);
    let job_id = start_job(&sidecar, &receiver, "ticker", json!({"count": 1})).await;
    let response = client()
        .get(format!("{}/jobs/{job_id}/events", sidecar.base))
        .header("Last-Event-ID", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let problem: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(problem["errors"][0]["source"], "header");
    assert_eq!(problem["errors"][0]["pointer"], "/Last-Event-ID");
}

#[tokio::test]
async fn jobs_are_listed_by_state_and_agent_and_a_bad_filter_names_the_field() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let done = start_job(&sidecar, &receiver, "ticker", json!({"count": 1})).await;
    receiver.completion(&done).await;
    let (status, list) = sidecar.get("/jobs?state=completed&agent=ticker").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [done.as_str()]);
    let (_, none) = sidecar.get("/jobs?state=completed&agent=napper").await;
    assert_eq!(none["jobs"], json!([]));
    let (status, problem) = sidecar.get("/jobs?state=running").await;
    assert_eq!(status, 422);
    assert_eq!(problem["errors"][0]["pointer"], "/state");
}

/// Reads an SSE stream until `n` events have arrived, then drops the connection.
async fn sse_first(sidecar: &Sidecar, job_id: &str, n: usize) -> Vec<Received> {
    let mut response = client()
        .get(format!("{}/jobs/{job_id}/events", sidecar.base))
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    loop {
        let frames = parse_sse(&text);
        if frames.len() >= n {
            // Only whole frames count: a frame is whole once the blank line after it arrived.
            let whole = text.rfind("\n\n").map_or(0, |i| i + 2);
            return parse_sse(&text[..whole]);
        }
        let chunk = tokio::time::timeout(PATIENCE, response.chunk())
            .await
            .expect("events while the job runs")
            .unwrap()
            .expect("the stream ended before the job did");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn last_event_id_resumes_a_live_stream_mid_run_without_gap_or_duplicate() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    let params = json!({"count": 30, "interval": 0.05});
    let job_id = start_job(&sidecar, &receiver, "ticker", params).await;
    let first = sse_first(&sidecar, &job_id, 4).await;
    let (_, live) = sidecar.get(&format!("/jobs/{job_id}")).await;
    assert_eq!(
        live["state"], "in_progress",
        "resumed mid-run, not after the end"
    );
    let resumed = sse(&sidecar, &job_id, Some(first.last().unwrap().id)).await;
    let whole = sse(&sidecar, &job_id, None).await;
    let joined: Vec<Received> = first.into_iter().chain(resumed).collect();
    assert_eq!(joined, whole);
}

#[tokio::test]
async fn a_websocket_resumes_after_its_cursor_and_is_closed_1012_on_shutdown() {
    let receiver = Receiver::start().await;
    let mut sidecar = Sidecar::start(&receiver).await;
    let done = start_job(&sidecar, &receiver, "ticker", json!({"count": 5})).await;
    receiver.completion(&done).await;
    let all = ws_events(&sidecar, &done).await;
    let middle = all[all.len() / 2]["seq"].as_u64().unwrap();
    let url = format!("{}?after={middle}", ws_url(&sidecar, &done));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut resumed = Vec::new();
    while let Some(Ok(Message::Text(text))) = socket.next().await {
        resumed.push(serde_json::from_str::<Value>(&text).unwrap());
    }
    assert_eq!(resumed, all[all.len() / 2 + 1..].to_vec());

    // A watcher of a running job, when the sidecar shuts down: 1012, reconnect with ?after=.
    let running = start_job(&sidecar, &receiver, "napper", json!({})).await;
    wait_state(&sidecar, &running, "in_progress").await;
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(&sidecar, &running))
        .await
        .unwrap();
    let first = socket.next().await.unwrap().unwrap();
    assert!(matches!(first, Message::Text(_)), "{first:?}");
    sidecar.signal("-TERM");
    let close = loop {
        match tokio::time::timeout(PATIENCE, socket.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    let code = u16::from(close.expect("a close frame with a code").code);
    assert_eq!(code, 1012);
    sidecar.wait();
}
