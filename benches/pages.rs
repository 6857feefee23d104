//! Dashboard pages and the JSON reads behind them against a big store (issue 20): fills a real sidecar (release build, SQLite)
//! with `BENCH_PAGE_JOBS` jobs (100,000 by default) over its HTTP API — a fifth of them run and
//! complete, the rest stay queued behind a blocker — then times every page a dashboard reads,
//! one request at a time as a viewer would, and prints each page's p50/p99 next to the same
//! server's `GET /health` (the floor of any request through it). `BENCH_PAGE_SAMPLES` sets the
//! requests per page (200). Prints a table and one JSON line per figure.

mod common;

use common::{SECRET, env_usize};

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};

/// The goal the issue sets for every page.
const GOAL_MS: f64 = 50.0;

/// A sidecar on a scratch folder, stopped (by pid) when dropped.
struct Sidecar {
    _dir: tempfile::TempDir,
    root: PathBuf,
    child: Child,
    base: String,
    receiver: String,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A receiver that takes every callback.
async fn receiver() -> String {
    let app = Router::new()
        .route("/progress", post(|| async { StatusCode::OK }))
        .route("/completion", post(|| async { StatusCode::OK }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

impl Sidecar {
    async fn start() -> Self {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let receiver = receiver().await;
        let config = format!(
            r#"[server]
listen = "127.0.0.1:0"
[storage]
shared_root = {root:?}
[store]
url = "sqlite://state.db"
[callbacks]
allowed_origins = ["{receiver}"]
allow_http = true
[callbacks.jwt]
issuer = "agent-sidecar"
audience = "bench"
secret = "{SECRET}"
[jobs]
allowed_job_names = ["BenchJob", "OtherJob"]
max_concurrent = 8
drain_timeout = "1s"
[agents.trivial]
command = ["/bin/true"]
timeout = "60s"
[agents.blocker]
command = ["sleep", "3600"]
timeout = "2h"
max_concurrent = 1
"#,
            root = root.display().to_string(),
        );
        std::fs::write(dir.path().join("sidecar.toml"), config).unwrap();
        let (child, base) = common::spawn_sidecar(dir.path());
        eprintln!("sidecar pid {} at {base}", child.id());
        Self {
            _dir: dir,
            root,
            child,
            base,
            receiver,
        }
    }

    /// Writes job `i`'s folder; returns its id and trigger body.
    fn job(&self, i: usize) -> (String, String) {
        let id = uuid::Uuid::new_v4().to_string();
        let agent = if i.is_multiple_of(5) {
            "trivial"
        } else {
            "blocker"
        };
        let job_name = if i.is_multiple_of(3) {
            "OtherJob"
        } else {
            "BenchJob"
        };
        let user = (i % 97).to_string();
        let input = self.root.join(&id).join("input");
        std::fs::create_dir_all(&input).unwrap();
        let manifest = json!({"schema_version": 1, "job_id": id, "user_id": user,
            "agent_name": agent, "job_name": job_name});
        std::fs::write(input.join("manifest.json"), manifest.to_string()).unwrap();
        let body = json!({
            "job_id": id, "user_id": user, "agent_name": agent, "job_name": job_name,
            "callback_urls": {"progress": format!("{}/progress", self.receiver),
                              "completion": format!("{}/completion", self.receiver)}
        });
        (id, body.to_string())
    }
}

/// Triggers `n` jobs, `concurrency` at a time; returns their ids in trigger order.
async fn fill(sidecar: &Sidecar, client: &reqwest::Client, n: usize) -> Vec<String> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(32));
    let url = format!("{}/agents/trigger", sidecar.base);
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (id, body) = sidecar.job(i);
        let permit = Arc::clone(&semaphore).acquire_owned().await.unwrap();
        let (client, url) = (client.clone(), url.clone());
        handles.push(tokio::spawn(async move {
            let status = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status();
            drop(permit);
            assert_eq!(status, 202);
            id
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for h in handles {
        ids.push(h.await.unwrap());
    }
    ids
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let response = client.get(url).send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

/// Waits until no `trivial` job is left unfinished.
async fn settle(sidecar: &Sidecar, client: &reqwest::Client) {
    let url = format!("{}/jobs/counts?agent=trivial", sidecar.base);
    loop {
        let counts = get_json(client, &url).await;
        let unfinished: u64 = counts["counts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| {
                ["received", "queued", "in_progress"].contains(&c["state"].as_str().unwrap())
            })
            .map(|c| c["count"].as_u64().unwrap())
            .sum();
        if unfinished == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `samples` sequential GETs of `path` after 5 to warm up; (p50, p99) in ms.
async fn time_page(client: &reqwest::Client, base: &str, path: &str, samples: usize) -> (f64, f64) {
    let url = format!("{base}{path}");
    for _ in 0..5 {
        client
            .get(&url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let response = client.get(&url).send().await.unwrap();
        let status = response.status();
        response.bytes().await.unwrap();
        took.push(started.elapsed());
        assert!(status.is_success(), "{path}: {status}");
    }
    took.sort();
    let at = |p: f64| took[((took.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99))
}

/// The pages a dashboard reads, with ids and a deep cursor from the filled store.
async fn pages(sidecar: &Sidecar, client: &reqwest::Client, ids: &[String]) -> Vec<String> {
    let middle = &ids[ids.len() / 2];
    // A cursor half-way down the list, reached as a client would: page after page.
    let mut cursor = String::new();
    let step = (ids.len() / 2).clamp(1, 1000);
    for _ in 0..ids.len() / 2 / step {
        let url = format!("{}/jobs?limit={step}{cursor}", sidecar.base);
        let page = get_json(client, &url).await;
        cursor = format!("&cursor={}", page["next_cursor"].as_str().unwrap());
    }
    // Every fifth job ran to completion; the one after it is queued.
    let completed = &ids[ids.len() / 10 * 5];
    let queued = &ids[ids.len() / 10 * 5 + 1];
    vec![
        "/overview?window=1h".to_owned(),
        "/overview?window=7d".to_owned(),
        "/jobs?limit=50".to_owned(),
        format!("/jobs?limit=50{cursor}"),
        "/jobs?limit=50&state=completed&agent=trivial".to_owned(),
        "/jobs?limit=50&job_name=OtherJob&user_id=42".to_owned(),
        format!("/jobs?limit=50&id_prefix={}", &middle[..6]),
        "/jobs/counts?agent=trivial".to_owned(),
        format!("/jobs/{completed}"),
        "/deliveries?limit=50".to_owned(),
        "/agents".to_owned(),
        // The dashboard's HTML pages (served without a session on loopback, as operator).
        "/ui".to_owned(),
        "/ui/jobs".to_owned(),
        format!("/ui/jobs?state=completed&agent=trivial{cursor}"),
        format!("/ui/jobs/{completed}"),
        format!("/ui/jobs/{queued}"),
        "/ui/deliveries".to_owned(),
        "/ui/deliveries?state=dead".to_owned(),
    ]
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let jobs = env_usize("BENCH_PAGE_JOBS", 100_000);
    let samples = env_usize("BENCH_PAGE_SAMPLES", 200);
    agent_sidecar::install_crypto_provider();
    let sidecar = Sidecar::start().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let started = Instant::now();
    let ids = fill(&sidecar, &client, jobs).await;
    settle(&sidecar, &client).await;
    eprintln!(
        "{jobs} jobs in the store ({} completed, the rest queued) in {:.0?}",
        jobs / 5,
        started.elapsed()
    );
    let (_, floor) = time_page(&client, &sidecar.base, "/health", samples).await;
    println!(
        "{:<58} {:>9} {:>9}   limit: GET /health p99 {floor:.2} ms",
        "page", "p50 ms", "p99 ms"
    );
    let mut worst: f64 = 0.0;
    for path in pages(&sidecar, &client, &ids).await {
        let (p50, p99) = time_page(&client, &sidecar.base, &path, samples).await;
        worst = worst.max(p99);
        println!("{path:<58} {p50:>9.2} {p99:>9.2}");
        let line = json!({"figure": "page p99", "page": path, "jobs": jobs, "p50_ms": p50,
            "value": p99, "unit": "ms", "limit": floor, "limit_name": "GET /health p99",
            "goal": format!("<= {GOAL_MS} ms")});
        println!("{line}");
    }
    // The overview is shared for a second; what one computation costs, after each expiry.
    for window in ["1h", "7d"] {
        let url = format!("{}/overview?window={window}", sidecar.base);
        let mut worst_cold: f64 = 0.0;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let started = Instant::now();
            get_json(&client, &url).await;
            worst_cold = worst_cold.max(started.elapsed().as_secs_f64() * 1000.0);
        }
        worst = worst.max(worst_cold);
        println!(
            "{:<58} {:>9} {worst_cold:>9.2}",
            format!("/overview?window={window} computed (max of 10)"),
            ""
        );
    }
    println!("worst page p99 {worst:.2} ms with {jobs} jobs (goal <= {GOAL_MS} ms)");
}
