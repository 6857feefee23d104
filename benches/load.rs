//! The load driver: a real release `agent-sidecar` on a scratch root with a real loopback
//! receiver, measured against this machine's own limits in the same run.
//!
//! `cargo bench --bench load` (BENCH_JOBS, BENCH_CONCURRENCY, BENCH_FIREHOSE_MB and
//! BENCH_QUEUED override the sizes). Prints a table and one JSON line per figure.

mod common;

use common::{SECRET, env_usize};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_sidecar::contract::Timestamp;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// One printed figure.
struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
    limit: Option<(f64, &'static str)>,
    goal: &'static str,
}

fn report(figures: &[Figure]) {
    println!(
        "\n{:<58} {:>12} {:<8} {:>12} {:>8}  goal",
        "figure", "value", "unit", "limit", "ratio"
    );
    for f in figures {
        let (limit, ratio) = match f.limit {
            Some((l, _)) => (format!("{l:.1}"), format!("{:.2}", f.value / l)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<58} {:>12.2} {:<8} {:>12} {:>8}  {}",
            f.name, f.value, f.unit, limit, ratio, f.goal
        );
    }
    println!();
    for f in figures {
        let line = json!({
            "figure": f.name, "value": f.value, "unit": f.unit,
            "limit": f.limit.map(|l| l.0), "limit_name": f.limit.map(|l| l.1),
            "ratio": f.limit.map(|l| f.value / l.0), "goal": f.goal,
        });
        println!("{line}");
    }
}

// ---- the machine's limits ----

fn spawn_rate(runs: usize, parallel: usize) -> f64 {
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| {
                for _ in 0..runs / parallel {
                    Command::new("/bin/true").status().unwrap();
                }
            });
        }
    });
    (runs / parallel * parallel) as f64 / started.elapsed().as_secs_f64()
}

fn sqlite_commit_rate(dir: &Path, commits: usize) -> f64 {
    let conn = rusqlite::Connection::open(dir.join("limit.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", [])
        .unwrap();
    let started = Instant::now();
    for i in 0..commits {
        conn.execute("INSERT INTO t (v) VALUES (?1)", [i.to_string()])
            .unwrap();
    }
    commits as f64 / started.elapsed().as_secs_f64()
}

async fn bare_http_rate(requests: usize, concurrency: usize) -> f64 {
    let app = Router::new().route(
        "/agents/trigger",
        post(|_: Bytes| async { (StatusCode::ACCEPTED, "{}") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/agents/trigger", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = json_client();
    let body = Bytes::from_static(br#"{"job_id":"x"}"#);
    let rate = fire(requests, concurrency, |_| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move { client.post(url).body(body).send().await.unwrap().status() }
    })
    .await;
    server.abort();
    rate.0
}

/// Sends `n` requests with `concurrency` in flight; returns (requests/s, latencies).
async fn fire<F, Fut>(n: usize, concurrency: usize, make: F) -> (f64, Vec<Duration>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = reqwest::StatusCode> + Send + 'static,
{
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let permit = Arc::clone(&semaphore).acquire_owned().await.unwrap();
        let request = make(i);
        handles.push(tokio::spawn(async move {
            let t = Instant::now();
            let status = request.await;
            drop(permit);
            assert!(status.is_success(), "{status}");
            t.elapsed()
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for h in handles {
        latencies.push(h.await.unwrap());
    }
    (n as f64 / started.elapsed().as_secs_f64(), latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

// ---- the sidecar ----

#[derive(Default)]
struct Completions {
    at: std::collections::HashMap<String, Instant>,
}

struct Bench {
    dir: tempfile::TempDir,
    /// The shared root its jobs are written to.
    root: PathBuf,
    child: Child,
    base: String,
    receiver: String,
    completions: Arc<Mutex<Completions>>,
    changed: Arc<Notify>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

async fn receiver() -> (String, Arc<Mutex<Completions>>, Arc<Notify>) {
    let completions = Arc::new(Mutex::new(Completions::default()));
    let changed = Arc::new(Notify::new());
    let state = (Arc::clone(&completions), Arc::clone(&changed));
    let app = Router::new()
        .route("/progress", post(|| async { StatusCode::OK }))
        .route(
            "/completion",
            post(|State((c, n)): State<(Arc<Mutex<Completions>>, Arc<Notify>)>, body: Bytes| async move {
                let v: Value = serde_json::from_slice(&body).unwrap();
                c.lock().unwrap().at.insert(v["job_id"].as_str().unwrap().to_owned(), Instant::now());
                n.notify_waiters();
                StatusCode::OK
            }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (origin, completions, changed)
}

/// Trigger and `GET /jobs/{id}` p99 (ms) for `n` new jobs of `agent` at `concurrency`.
async fn probe(
    bench: &Bench,
    client: &reqwest::Client,
    n: usize,
    concurrency: usize,
) -> (f64, f64) {
    let prepared: Arc<Vec<(String, Bytes)>> =
        Arc::new((0..n).map(|_| bench.job("trivial", json!({}))).collect());
    let url = format!("{}/agents/trigger", bench.base);
    let (_, mut triggers) = fire(n, concurrency, |i| {
        let (client, url, body) = (client.clone(), url.clone(), prepared[i].1.clone());
        async move { client.post(url).body(body).send().await.unwrap().status() }
    })
    .await;
    let (_, mut gets) = fire(n, concurrency, |i| {
        let (client, url) = (
            client.clone(),
            format!("{}/jobs/{}", bench.base, prepared[i].0),
        );
        async move { client.get(url).send().await.unwrap().status() }
    })
    .await;
    triggers.sort();
    gets.sort();
    (percentile(&triggers, 0.99), percentile(&gets, 0.99))
}

/// Fills the queue behind a blocker job and compares trigger and GET p99 with a near-empty
/// queue; then measures restart-to-ready with the full queue. Returns the figures.
async fn deep_queue(queued: usize, concurrency: usize) -> Vec<Figure> {
    let mut bench = Bench::start(1).await;
    let client = json_client();
    let (_, blocker) = bench.job("blocker", json!({}));
    client
        .post(format!("{}/agents/trigger", bench.base))
        .body(blocker)
        .send()
        .await
        .unwrap();
    let (empty_trigger, empty_get) = probe(&bench, &client, 1000, concurrency).await;
    let mut left = queued.saturating_sub(2000);
    while left > 0 {
        let n = left.min(10_000);
        probe(&bench, &client, n, concurrency).await;
        left -= n;
    }
    let (full_trigger, full_get) = probe(&bench, &client, 1000, concurrency).await;
    let (_, rss) = bench.usage();
    let ready = bench.restart();
    vec![
        Figure {
            name: "queued jobs",
            value: queued as f64,
            unit: "jobs",
            limit: None,
            goal: "",
        },
        Figure {
            name: "sidecar RSS with the queue full",
            value: rss,
            unit: "MB",
            limit: None,
            goal: "<= 64 MB",
        },
        Figure {
            name: "trigger p99, full queue",
            value: full_trigger,
            unit: "ms",
            limit: Some((empty_trigger, "empty queue")),
            goal: "<= 1.5 x empty",
        },
        Figure {
            name: "GET /jobs/{id} p99, full queue",
            value: full_get,
            unit: "ms",
            limit: Some((empty_get, "empty queue")),
            goal: "<= 1.5 x empty",
        },
        Figure {
            name: "restart to ready, full queue",
            value: ready.as_secs_f64() * 1000.0,
            unit: "ms",
            limit: None,
            goal: "<= 1000 ms",
        },
    ]
}

impl Bench {
    /// One sidecar alone on an SQLite file.
    async fn start(max_concurrent: usize) -> Self {
        Self::launch(max_concurrent, "url = \"sqlite://state.db\"", None).await
    }

    /// One sidecar with `store` as its `[store]` section; a fleet node shares the first node's
    /// root and receiver.
    async fn launch(max_concurrent: usize, store: &str, first: Option<&Bench>) -> Self {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let (root, receiver, completions, changed) = match first {
            Some(b) => (
                b.root.clone(),
                b.receiver.clone(),
                Arc::clone(&b.completions),
                Arc::clone(&b.changed),
            ),
            None => {
                let root = dir.path().join("root");
                std::fs::create_dir_all(&root).unwrap();
                let (receiver, completions, changed) = receiver().await;
                (root, receiver, completions, changed)
            }
        };
        let chatty = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agents/chatty.py");
        let config = format!(
            r#"[server]
listen = "127.0.0.1:0"
[storage]
shared_root = {root:?}
[store]
{store}
[callbacks]
allowed_origins = ["{receiver}"]
allow_http = true
progress_min_interval = "100ms"
[callbacks.jwt]
issuer = "agent-sidecar"
audience = "bench"
secret = "{SECRET}"
[jobs]
allowed_job_names = ["BenchJob"]
max_concurrent = {max_concurrent}
# The blocker runs for an hour: a restart stops it after this instead of the default 30 s.
drain_timeout = "1s"
[agents.trivial]
command = ["/bin/true"]
timeout = "60s"
[agents.chatty]
command = ["python3", {chatty:?}]
timeout = "600s"
[agents.blocker]
command = ["sleep", "3600"]
timeout = "2h"
"#,
            chatty = chatty.display().to_string(),
            root = root.display().to_string(),
        );
        std::fs::write(dir.path().join("sidecar.toml"), config).unwrap();
        let (child, base) = common::spawn_sidecar(dir.path());
        eprintln!("sidecar pid {} at {base}", child.id());
        Self {
            dir,
            root,
            child,
            base,
            receiver,
            completions,
            changed,
        }
    }

    /// Stops the process (SIGTERM) and starts it again on the same folder and database;
    /// returns the time from spawn to its "listening" line.
    fn restart(&mut self) -> Duration {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let started = Instant::now();
        let (child, base) = common::spawn_sidecar(self.dir.path());
        let ready = started.elapsed();
        (self.child, self.base) = (child, base);
        ready
    }

    /// Writes a job folder the way Rails does and returns the trigger body.
    fn job(&self, agent: &str, params: Value) -> (String, Bytes) {
        let id = uuid::Uuid::new_v4().to_string();
        let input = self.root.join(&id).join("input");
        std::fs::create_dir_all(&input).unwrap();
        let manifest = json!({"schema_version": 1, "job_id": id, "user_id": "1", "agent_name": agent, "job_name": "BenchJob"});
        std::fs::write(input.join("manifest.json"), manifest.to_string()).unwrap();
        let body = json!({
            "job_id": id, "user_id": "1", "agent_name": agent, "job_name": "BenchJob", "params": params,
            "callback_urls": {"progress": format!("{}/progress", self.receiver), "completion": format!("{}/completion", self.receiver)}
        });
        (id, Bytes::from(body.to_string()))
    }

    /// Triggers one trivial job and waits for its completion; returns its id and when it was
    /// sent (monotonic and wall clock).
    async fn run_one(&self, client: &reqwest::Client) -> (String, Instant, Timestamp) {
        let (id, body) = self.job("trivial", json!({}));
        let (sent, wall_sent) = (Instant::now(), Timestamp::now());
        let r = client
            .post(format!("{}/agents/trigger", self.base))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        self.wait_completions(std::slice::from_ref(&id)).await;
        (id, sent, wall_sent)
    }

    /// When the job first entered each state, from `GET /jobs/{id}`.
    async fn transitions(&self, client: &reqwest::Client, id: &str) -> HashMap<String, Timestamp> {
        let body = client
            .get(format!("{}/jobs/{id}", self.base))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let status: Value = serde_json::from_slice(&body).unwrap();
        let mut first = HashMap::new();
        for t in status["transitions"].as_array().unwrap() {
            let at = t["at"].as_str().unwrap().parse().unwrap();
            first
                .entry(t["state"].as_str().unwrap().to_owned())
                .or_insert(at);
        }
        first
    }

    async fn wait_completions(&self, ids: &[String]) {
        loop {
            let notified = self.changed.notified();
            if ids
                .iter()
                .all(|id| self.completions.lock().unwrap().at.contains_key(id))
            {
                return;
            }
            tokio::time::timeout(Duration::from_secs(600), notified)
                .await
                .expect("completions arrive");
        }
    }

    /// (CPU seconds of the sidecar itself, excluding reaped agents; RSS in MB).
    fn usage(&self) -> (f64, f64) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
        let ticks = 100.0;
        let cpu = (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / ticks;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let rss_kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap();
        (cpu, rss_kb / 1024.0)
    }
}

#[tokio::main]
async fn main() {
    let jobs = env_usize("BENCH_JOBS", 2000);
    let concurrency = env_usize("BENCH_CONCURRENCY", 64);
    let firehose_mb = env_usize("BENCH_FIREHOSE_MB", 1024);
    let queued = env_usize("BENCH_QUEUED", 100_000);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    agent_sidecar::install_crypto_provider();
    eprintln!(
        "load driver: {jobs} jobs, concurrency {concurrency}, firehose {firehose_mb} MB, {cores} cores"
    );

    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let spawn_seq = spawn_rate(300, 1);
    let spawn_par = spawn_rate(600, cores * 2);
    let commits = sqlite_commit_rate(scratch.path(), 300);
    let bare = bare_http_rate(jobs.max(2000), concurrency).await;

    let bench = Bench::start(cores * 2).await;
    let client = json_client();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu0, idle_rss) = bench.usage();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_cpu = (bench.usage().0 - cpu0) / 2.0 * 100.0;

    // Idle latency: one job at a time.
    let mut to_start = Vec::new();
    let mut to_done = Vec::new();
    for _ in 0..50 {
        let (id, sent, wall_sent) = bench.run_one(&client).await;
        to_done.push(bench.completions.lock().unwrap().at[&id] - sent);
        let started = bench.transitions(&client, &id).await["in_progress"];
        to_start.push(Duration::from_millis(started.millis_since(wall_sent)));
    }
    to_start.sort();
    to_done.sort();

    // Burst: N triggers at concurrency C, then every completion.
    let prepared: Vec<(String, Bytes)> =
        (0..jobs).map(|_| bench.job("trivial", json!({}))).collect();
    let ids: Vec<String> = prepared.iter().map(|(id, _)| id.clone()).collect();
    let bodies = Arc::new(prepared);
    let (cpu_before, _) = bench.usage();
    let burst_start = Instant::now();
    let url = format!("{}/agents/trigger", bench.base);
    let (trigger_rate, mut trigger_latency) = fire(jobs, concurrency, |i| {
        let (client, url, body) = (client.clone(), url.clone(), bodies[i].1.clone());
        async move { client.post(url).body(body).send().await.unwrap().status() }
    })
    .await;
    bench.wait_completions(&ids).await;
    let e2e_rate = jobs as f64 / burst_start.elapsed().as_secs_f64();
    let (cpu_after, burst_rss) = bench.usage();
    trigger_latency.sort();

    // Firehose: an agent printing progress lines as fast as it can, against /dev/null.
    let chatty = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agents/chatty.py");
    let params = json!({"mb": firehose_mb});
    let t = Instant::now();
    let status = Command::new("python3")
        .arg(&chatty)
        .env("AGENT_PARAMS", params.to_string())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let devnull_s = t.elapsed().as_secs_f64();
    // The floor for any supervisor that reads the output: the same agent into a pipe that `cat`
    // drains to /dev/null.
    let t = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "python3 {:?} | cat > /dev/null",
            chatty.display().to_string()
        ))
        .env("AGENT_PARAMS", params.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let pipe_s = t.elapsed().as_secs_f64();
    let (id, body) = bench.job("chatty", params);
    let t = Instant::now();
    client
        .post(format!("{}/agents/trigger", bench.base))
        .body(body)
        .send()
        .await
        .unwrap();
    bench.wait_completions(std::slice::from_ref(&id)).await;
    let supervised_s = t.elapsed().as_secs_f64();
    let (_, firehose_rss) = bench.usage();
    drop(bench);
    let deep = deep_queue(queued, concurrency).await;

    let mut figures = vec![
        Figure {
            name: "limit: spawn-and-wait /bin/true, sequential",
            value: spawn_seq,
            unit: "/s",
            limit: None,
            goal: "",
        },
        Figure {
            name: "limit: spawn-and-wait /bin/true, parallel",
            value: spawn_par,
            unit: "/s",
            limit: None,
            goal: "",
        },
        Figure {
            name: "limit: durable SQLite commits (WAL, synchronous=FULL)",
            value: commits,
            unit: "/s",
            limit: None,
            goal: "",
        },
        Figure {
            name: "limit: bare axum loopback requests",
            value: bare,
            unit: "/s",
            limit: None,
            goal: "",
        },
        Figure {
            name: "triggers accepted (durable before 202)",
            value: trigger_rate,
            unit: "/s",
            limit: Some((bare, "bare HTTP")),
            goal: ">= 5000/s or >= 0.5 x bare HTTP",
        },
        Figure {
            name: "trigger p50 latency under burst",
            value: percentile(&trigger_latency, 0.5),
            unit: "ms",
            limit: None,
            goal: "",
        },
        Figure {
            name: "trigger p99 latency under burst",
            value: percentile(&trigger_latency, 0.99),
            unit: "ms",
            limit: None,
            goal: "",
        },
        Figure {
            name: "jobs completed end to end",
            value: e2e_rate,
            unit: "/s",
            limit: Some((spawn_par, "parallel spawn")),
            goal: ">= 0.6 x spawn-and-wait",
        },
        Figure {
            name: "trigger -> agent started p50, idle (ms clock)",
            value: percentile(&to_start, 0.5),
            unit: "ms",
            limit: None,
            goal: "<= 1 ms + spawn",
        },
        Figure {
            name: "trigger -> agent started p99, idle (ms clock)",
            value: percentile(&to_start, 0.99),
            unit: "ms",
            limit: None,
            goal: "<= 5 ms",
        },
        Figure {
            name: "trigger -> completion received p50, idle",
            value: percentile(&to_done, 0.5),
            unit: "ms",
            limit: Some((1000.0 / spawn_seq, "one spawn")),
            goal: "<= 5 ms",
        },
        Figure {
            name: "sidecar CPU per job (excluding the agent)",
            value: (cpu_after - cpu_before) * 1000.0 / jobs as f64,
            unit: "ms",
            limit: None,
            goal: "<= 0.3 ms",
        },
        Figure {
            name: "firehose: agent wall time supervised",
            value: supervised_s,
            unit: "s",
            limit: Some((devnull_s, "to /dev/null")),
            goal: "<= 1.05 x /dev/null",
        },
        Figure {
            name: "firehose: agent wall time supervised, vs a pipe to cat",
            value: supervised_s,
            unit: "s",
            limit: Some((pipe_s, "pipe | cat")),
            goal: "",
        },
        Figure {
            name: "sidecar RSS after the firehose",
            value: firehose_rss,
            unit: "MB",
            limit: None,
            goal: "bounded",
        },
        Figure {
            name: "sidecar RSS after the burst",
            value: burst_rss,
            unit: "MB",
            limit: None,
            goal: "",
        },
        Figure {
            name: "idle sidecar RSS",
            value: idle_rss,
            unit: "MB",
            limit: None,
            goal: "<= 20 MB",
        },
        Figure {
            name: "idle sidecar CPU",
            value: idle_cpu,
            unit: "%",
            limit: None,
            goal: "~0 (no busy polling)",
        },
    ];
    figures.extend(deep);
    match std::env::var("AGENT_SIDECAR_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => figures.extend(fleet(&url, jobs, concurrency, cores).await),
        _ => eprintln!("fleet figures skipped: AGENT_SIDECAR_TEST_POSTGRES_URL is not set"),
    }
    report(&figures);
}

// ---- the fleet: several sidecars on one PostgreSQL ----

#[path = "../tests/support/postgres.rs"]
mod test_postgres;

/// A fresh database on the server at `base`, with pg_stat_statements when the server loads it;
/// its URL.
async fn fresh_database(base: &str) -> String {
    let url = test_postgres::fresh_database(base, "bench").await;
    let _ = try_sql(&url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await;
    url
}

async fn try_sql(
    url: &str,
    statement: &str,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client.query(statement, &[]).await
}

/// Statements the sidecars ran in this database so far (pg_stat_statements), if available.
async fn statements(url: &str) -> Option<f64> {
    let rows = try_sql(
        url,
        "SELECT sum(calls)::float8 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
         WHERE d.datname = current_database()",
    )
    .await
    .ok()?;
    rows.first()?.try_get::<_, Option<f64>>(0).ok()?
}

/// `nodes` sidecars on one fresh database and one shared root, each allowed `per_node` runs.
async fn start_fleet(base: &str, nodes: usize, per_node: usize) -> (String, Vec<Bench>) {
    let url = fresh_database(base).await;
    let mut fleet: Vec<Bench> = Vec::new();
    for n in 0..nodes {
        let store = format!("url = {url:?}\nnode_id = \"n{n}\"");
        let node = Bench::launch(per_node, &store, fleet.first()).await;
        fleet.push(node);
    }
    (url, fleet)
}

/// Jobs/s completed with 1, 2 and 3 nodes, claim latency across nodes, and statements per job.
async fn fleet(base: &str, jobs: usize, concurrency: usize, cores: usize) -> Vec<Figure> {
    let client = json_client();
    let mut figures = Vec::new();
    let mut single = None;
    for (nodes, name) in [
        (1, "fleet: jobs/s, 1 node"),
        (2, "fleet: jobs/s, 2 nodes"),
        (3, "fleet: jobs/s, 3 nodes"),
    ] {
        let (url, fleet) = start_fleet(base, nodes, cores * 2).await;
        let front = &fleet[0];
        let prepared: Arc<Vec<(String, Bytes, String)>> = Arc::new(
            (0..jobs)
                .map(|i| {
                    let (id, body) = front.job("trivial", json!({}));
                    (
                        id,
                        body,
                        format!("{}/agents/trigger", fleet[i % nodes].base),
                    )
                })
                .collect(),
        );
        let before = statements(&url).await;
        let started = Instant::now();
        fire(jobs, concurrency, |i| {
            let (client, body, url) =
                (client.clone(), prepared[i].1.clone(), prepared[i].2.clone());
            async move { client.post(url).body(body).send().await.unwrap().status() }
        })
        .await;
        let ids: Vec<String> = prepared.iter().map(|p| p.0.clone()).collect();
        front.wait_completions(&ids).await;
        let rate = jobs as f64 / started.elapsed().as_secs_f64();
        let after = statements(&url).await;
        single.get_or_insert(rate);
        figures.push(Figure {
            name,
            value: rate,
            unit: "/s",
            limit: single.map(|r| (r, "1 node")),
            goal: "",
        });
        if nodes == 3 {
            if let (Some(b), Some(a)) = (before, after) {
                figures.push(Figure {
                    name: "fleet: SQL statements per job (pg_stat_statements, all nodes)",
                    value: (a - b) / jobs as f64,
                    unit: "",
                    limit: None,
                    goal: "",
                });
            }
            figures.extend(claim_latency(&client, &fleet).await);
        }
    }
    figures
}

/// Trigger on node 0 of an idle fleet -> claimed by some node (ms clock, from the job's
/// transitions): the NOTIFY wake-up and the SKIP LOCKED claim.
async fn claim_latency(client: &reqwest::Client, fleet: &[Bench]) -> Vec<Figure> {
    let mut latency = Vec::new();
    for _ in 0..50 {
        let (id, _, _) = fleet[0].run_one(client).await;
        let at = fleet[0].transitions(client, &id).await;
        latency.push(Duration::from_millis(
            at["in_progress"].millis_since(at["queued"]),
        ));
    }
    latency.sort();
    vec![
        Figure {
            name: "fleet: trigger -> claimed p50, 3 idle nodes (ms clock)",
            value: percentile(&latency, 0.5),
            unit: "ms",
            limit: None,
            goal: "",
        },
        Figure {
            name: "fleet: trigger -> claimed p99, 3 idle nodes (ms clock)",
            value: percentile(&latency, 0.99),
            unit: "ms",
            limit: None,
            goal: "",
        },
    ]
}

/// A client whose posts say they are JSON, as the trigger requires (415 otherwise).
fn json_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        reqwest::header::HeaderValue::from_static("application/json"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("a client with default headers builds")
}
