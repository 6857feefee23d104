//! Test harness: a real `agent-sidecar serve` process on a scratch root, a real recording
//! receiver on loopback, and job folders written the way Rails writes them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;

pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
pub const ISSUER: &str = "agent-sidecar";
pub const AUDIENCE: &str = "rails-test";
/// Generous upper bound for anything a test waits on; reaching it fails the test.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub authorization: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived, in Unix milliseconds.
    pub at_unix_ms: i64,
}

impl Hit {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("callback body is JSON")
    }
}

struct Recorded {
    hits: Vec<Hit>,
    /// What the receiver answers on `/completion`.
    completion_status: StatusCode,
    /// What the receiver answers on `/progress`.
    progress_status: StatusCode,
}

/// A recording webhook receiver on 127.0.0.1.
#[derive(Clone)]
pub struct Receiver {
    pub origin: String,
    recorded: Arc<Mutex<Recorded>>,
    changed: Arc<Notify>,
    _server: Arc<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    pub async fn start() -> Self {
        Self::answering(StatusCode::OK).await
    }

    /// A port for a receiver that is down until [`Receiver::start_on`]: bound but not
    /// listening, so connections to it are refused and no other process can take it.
    pub fn reserve() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        (socket, addr)
    }

    /// A receiver answering 200 on a port from [`Receiver::reserve`].
    pub async fn start_on(reserved: tokio::net::TcpSocket) -> Self {
        Self::serve(reserved.listen(1024).unwrap(), StatusCode::OK)
    }

    /// A receiver that answers `status` to every completion.
    pub async fn answering(completion_status: StatusCode) -> Self {
        Self::serve(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            completion_status,
        )
    }

    fn serve(listener: tokio::net::TcpListener, completion_status: StatusCode) -> Self {
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let (app, recorded, changed) = Self::app(completion_status);
        let server = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service())
                .await
                .unwrap();
        });
        Self {
            origin,
            recorded,
            changed,
            _server: Arc::new(server),
        }
    }

    /// A receiver behind TLS: `acceptor` decides the server certificate and whether a client
    /// certificate is required. Connections whose handshake fails are dropped.
    pub async fn start_tls(acceptor: tokio_rustls::TlsAcceptor) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("https://{}", listener.local_addr().unwrap());
        let (app, recorded, changed) = Self::app(StatusCode::OK);
        let server = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            origin,
            recorded,
            changed,
            _server: Arc::new(server),
        }
    }

    fn app(completion_status: StatusCode) -> (Router, Arc<Mutex<Recorded>>, Arc<Notify>) {
        let recorded = Arc::new(Mutex::new(Recorded {
            hits: Vec::new(),
            completion_status,
            progress_status: StatusCode::OK,
        }));
        let changed = Arc::new(Notify::new());
        let state = (Arc::clone(&recorded), Arc::clone(&changed));
        let app = Router::new()
            .route("/progress", post(record))
            .route("/completion", post(record))
            .route("/landed", post(record).get(record))
            .with_state(state);
        (app, recorded, changed)
    }

    /// Changes what the receiver answers to completions from now on.
    pub fn set_completion_status(&self, status: StatusCode) {
        self.recorded.lock().unwrap().completion_status = status;
    }

    /// Changes what the receiver answers to progress callbacks from now on.
    pub fn set_progress_status(&self, status: StatusCode) {
        self.recorded.lock().unwrap().progress_status = status;
    }

    pub fn hits(&self, path: &str) -> Vec<Hit> {
        self.recorded
            .lock()
            .unwrap()
            .hits
            .iter()
            .filter(|h| h.path == path)
            .cloned()
            .collect()
    }

    /// Waits (event-driven) until `done` holds for the recorded hits.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                {
                    let rec = self.recorded.lock().unwrap();
                    if done(&rec.hits) {
                        return rec.hits.clone();
                    }
                }
                notified.await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// Waits for the completion callback of `job_id`.
    pub async fn completion(&self, job_id: &str) -> Hit {
        let hits = self
            .wait_until("a completion", |hits| {
                hits.iter()
                    .any(|h| h.path == "/completion" && h.json()["job_id"] == job_id)
            })
            .await;
        hits.into_iter()
            .find(|h| h.path == "/completion" && h.json()["job_id"] == job_id)
            .unwrap()
    }
}

async fn record(
    State((recorded, changed)): State<(Arc<Mutex<Recorded>>, Arc<Notify>)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(axum::http::HeaderName, &'static str); 1]) {
    let hit = Hit {
        path: uri.path().to_owned(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        headers,
        body,
        at_unix_ms: agent_sidecar::contract::Timestamp::now().unix_ms(),
    };
    let status = {
        let mut rec = recorded.lock().unwrap();
        rec.hits.push(hit);
        if uri.path() == "/completion" {
            rec.completion_status
        } else {
            rec.progress_status
        }
    };
    changed.notify_waiters();
    // Every answer names a Location, so a redirect status is a real redirect (to `/landed`,
    // recorded like the rest: a client that follows it shows up there).
    (status, [(axum::http::header::LOCATION, "/landed")])
}

/// A running `agent-sidecar serve`.
pub struct Sidecar {
    pub base: String,
    pub dir: tempfile::TempDir,
    pub shared_root: PathBuf,
    pub config_path: PathBuf,
    env: Vec<(String, String)>,
    child: Child,
}

/// Agents every test sidecar knows, by registry name.
fn agents_toml() -> String {
    let ex = repo().join("examples/agents");
    let t = repo().join("tests/agents");
    let agent = |name: &str, script: PathBuf, timeout: &str| {
        format!(
            "[agents.{name}]\ncommand = [\"python3\", {:?}]\ntimeout = \"{timeout}\"\n",
            script.display().to_string()
        )
    };
    [
        agent("summarizer_v2", ex.join("summarizer.py"), "60s")
            + &format!(
                "params_schema = {:?}\n",
                ex.join("summarizer.params.schema.json")
                    .display()
                    .to_string()
            ),
        agent("failing_agent", ex.join("failing.py"), "60s"),
        agent("sleeper", ex.join("sleeper.py"), "1s"),
        agent("with_child", t.join("with_child.py"), "1s"),
        agent("chatty", t.join("chatty.py"), "120s"),
        agent("symlinker", t.join("symlinker.py"), "60s"),
        agent("planter", t.join("planter.py"), "60s"),
        agent("burst", t.join("burst.py"), "60s"),
        agent("overlap", t.join("overlap.py"), "60s") + "max_concurrent = 2\n",
        agent("overlap_wide", t.join("overlap.py"), "60s"),
        agent("env_dump", t.join("env_dump.py"), "60s")
            + "env = { AGENT_EXTRA = \"from-config\" }\n",
        agent("napper", ex.join("sleeper.py"), "60s"),
        agent("napper_no_retry", ex.join("sleeper.py"), "60s") + "on_restart = \"fail\"\n",
        agent("lane", ex.join("sleeper.py"), "60s") + "max_concurrent = 1\n",
        agent("silent", ex.join("sleeper.py"), "60s") + "stale_after = \"300ms\"\n",
        agent("with_child_long", t.join("with_child.py"), "60s"),
        agent("ticker", t.join("ticker.py"), "60s"),
        agent("grandparent", t.join("grandparent.py"), "60s"),
    ]
    .join("\n")
}

impl Sidecar {
    pub fn config_text(shared_root: &Path, db: &Path, origin: &str) -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 8192

[storage]
shared_root = {shared_root:?}

[store]
url = "sqlite://{db}"

[callbacks]
allowed_origins = ["{origin}"]
allow_http = true
timeout = "5s"
progress_min_interval = "0s"
retry_schedule = ["0s", "200ms", "500ms"]

[callbacks.jwt]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
secret = "{SECRET}"

[jobs]
allowed_job_names = ["ReportCompileJob", "OtherJob"]
max_concurrent = 4
kill_grace = "500ms"
max_line_bytes = 4096
drain_timeout = "1s"

[sweeper]
interval = "100ms"

{agents}
"#,
            shared_root = shared_root.display().to_string(),
            db = db.display(),
            agents = agents_toml(),
        )
    }

    pub async fn start(receiver: &Receiver) -> Self {
        Self::start_with_env(receiver, &[]).await
    }

    /// Starts with `AGENT_SIDECAR__*` overrides, e.g. `("CALLBACKS__MAX_AGE", "1s")`.
    pub async fn start_with_env(receiver: &Receiver, env: &[(&str, &str)]) -> Self {
        Self::start_with(receiver, env, "").await
    }

    /// Starts with environment overrides and `extra` TOML appended to the config file.
    pub async fn start_with(receiver: &Receiver, env: &[(&str, &str)], extra: &str) -> Self {
        let env = env
            .iter()
            .map(|(k, v)| (format!("AGENT_SIDECAR__{k}"), (*v).to_owned()))
            .collect();
        Self::start_in_env(&receiver.origin, env, extra)
    }

    /// Starts with callbacks allowed to `origin` (e.g. a Rails app) instead of a receiver,
    /// with `AGENT_SIDECAR__*` overrides and `extra` TOML.
    pub fn start_for_origin(origin: &str, env: &[(&str, &str)], extra: &str) -> Self {
        let env = env
            .iter()
            .map(|(k, v)| (format!("AGENT_SIDECAR__{k}"), (*v).to_owned()))
            .collect();
        Self::start_in_env(origin, env, extra)
    }

    /// Starts a node of a fleet: callbacks to `origin`, jobs in `shared_root` (shared with the
    /// other nodes), `AGENT_SIDECAR__*` overrides (the store's URL among them) and `extra` TOML.
    pub fn start_node(origin: &str, shared_root: &Path, env: &[(&str, &str)], extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("sidecar.toml");
        let text = Self::config_text(shared_root, &dir.path().join("state.db"), origin) + extra;
        std::fs::write(&config_path, text).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (format!("AGENT_SIDECAR__{k}"), (*v).to_owned()))
            .collect();
        Self::spawn(dir, shared_root.to_owned(), config_path, env)
    }

    /// Starts on a config file the caller wrote (`config_path`, `text` from `config_text`
    /// plus anything) inside `dir`, with jobs in `shared_root`.
    pub fn start_on_config(
        dir: tempfile::TempDir,
        shared_root: PathBuf,
        config_path: PathBuf,
    ) -> Self {
        Self::spawn(dir, shared_root, config_path, Vec::new())
    }

    /// Sends `signal` (e.g. `"-STOP"`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Starts with these variables in the process environment as written (e.g.
    /// `NOTIFY_SOCKET`), calling `before_address` with the process's stdout once it runs and
    /// before its address line is read: to see what the sidecar had announced by the time
    /// something else happened (a notify message).
    pub fn start_with_process_env_observing(
        receiver: &Receiver,
        env: &[(&str, &str)],
        before_address: impl FnOnce(&std::process::ChildStdout),
    ) -> Self {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (dir, shared_root, config_path) = Self::scratch(&receiver.origin, "");
        Self::spawn_observing(dir, shared_root, config_path, env, before_address)
    }

    fn start_in_env(origin: &str, env: Vec<(String, String)>, extra: &str) -> Self {
        let (dir, shared_root, config_path) = Self::scratch(origin, extra);
        Self::spawn(dir, shared_root, config_path, env)
    }

    /// A scratch folder with a shared root and a config file calling back to `origin`.
    fn scratch(origin: &str, extra: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let shared_root = dir.path().join("shared_root");
        std::fs::create_dir_all(&shared_root).unwrap();
        let config_path = dir.path().join("sidecar.toml");
        std::fs::write(
            &config_path,
            Self::config_text(&shared_root, &dir.path().join("state.db"), origin) + extra,
        )
        .unwrap();
        (dir, shared_root, config_path)
    }

    /// SIGKILLs the process (a crash) and starts another on the same folder, database and
    /// config.
    pub fn crash_and_restart(mut self) -> Self {
        self.kill_hard();
        self.restart()
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }

    /// Waits for the process to exit (after a signal sent elsewhere).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// Starts another process on the same folder, database and config (after a stop).
    pub fn restart(mut self) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let old_dir = std::mem::replace(&mut self.dir, dir);
        let shared_root = self.shared_root.clone();
        let config_path = self.config_path.clone();
        Self::spawn(
            old_dir,
            shared_root,
            config_path,
            std::mem::take(&mut self.env),
        )
    }

    fn spawn(
        dir: tempfile::TempDir,
        shared_root: PathBuf,
        config_path: PathBuf,
        env: Vec<(String, String)>,
    ) -> Self {
        Self::spawn_observing(dir, shared_root, config_path, env, |_| {})
    }

    fn spawn_observing(
        dir: tempfile::TempDir,
        shared_root: PathBuf,
        config_path: PathBuf,
        env: Vec<(String, String)>,
        before_address: impl FnOnce(&std::process::ChildStdout),
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("sidecar.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("AGENT_SIDECAR_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let observed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| before_address(&stdout)));
        if let Err(panic) = observed {
            let _ = child.kill();
            let _ = child.wait();
            std::panic::resume_unwind(panic);
        }
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first).unwrap();
        let base = first
            .trim()
            .strip_prefix("agent-sidecar listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {first:?}; log: {}",
                    std::fs::read_to_string(dir.path().join("sidecar.log")).unwrap_or_default()
                )
            })
            .to_owned();
        Self {
            base,
            dir,
            shared_root,
            config_path,
            env,
            child,
        }
    }

    /// Replaces the `extra` TOML of the config file and sends SIGHUP.
    pub fn reconfigure(&self, receiver: &Receiver, extra: &str) {
        let text = Self::config_text(
            &self.shared_root,
            &self.dir.path().join("state.db"),
            &receiver.origin,
        ) + extra;
        std::fs::write(&self.config_path, text).unwrap();
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process dies without cleaning up.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn job_dir(&self, job_id: &str) -> PathBuf {
        self.shared_root.join(job_id)
    }

    /// Writes `<job_id>/input/` with a manifest agreeing with `trigger` and a text file.
    pub fn write_job(&self, trigger: &Value) -> PathBuf {
        let manifest = json!({
            "schema_version": 1,
            "job_id": trigger["job_id"],
            "user_id": trigger["user_id"],
            "agent_name": trigger["agent_name"],
            "job_name": trigger["job_name"],
        });
        self.write_manifest(trigger["job_id"].as_str().unwrap(), &manifest.to_string())
    }

    pub fn write_manifest(&self, job_id: &str, text: &str) -> PathBuf {
        let input = self.job_dir(job_id).join("input");
        std::fs::create_dir_all(&input).unwrap();
        std::fs::write(input.join("manifest.json"), text).unwrap();
        std::fs::write(
            input.join("notes.txt"),
            "The quarter went well. Revenue grew. Costs fell.\n",
        )
        .unwrap();
        self.job_dir(job_id)
    }

    pub async fn post_trigger(&self, body: &Value) -> (StatusCode, Value) {
        self.post_raw("/agents/trigger", serde_json::to_vec(body).unwrap())
            .await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let response = client()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let is_problem = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/problem+json");
        let value: Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null);
        if status.is_client_error() {
            assert!(is_problem, "{status} without problem+json: {value}");
        }
        (StatusCode::from_u16(status.as_u16()).unwrap(), value)
    }

    /// The body of `GET path` as text, whatever the status.
    pub async fn get_text(&self, path: &str) -> String {
        client()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = client()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (
            status,
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null),
        )
    }
}

impl Drop for Sidecar {
    /// SIGTERM first, so the sidecar stops its agents' process groups; SIGKILL if it lingers.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Re-checks `check` every 50 ms until it yields a value; fails the test after [`PATIENCE`].
/// For conditions no event announces (a row the sidecar wrote).
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP client for talking to the sidecar.
pub fn client() -> reqwest::Client {
    agent_sidecar::install_crypto_provider();
    reqwest::Client::new()
}

/// A trigger body for `agent` reporting to `receiver`.
pub fn trigger(receiver: &Receiver, agent: &str) -> Value {
    json!({
        "job_id": uuid::Uuid::new_v4().to_string(),
        "user_id": "42",
        "agent_name": agent,
        "job_name": "ReportCompileJob",
        "callback_urls": {
            "progress": format!("{}/progress", receiver.origin),
            "completion": format!("{}/completion", receiver.origin),
        }
    })
}

/// Writes the job's folder, triggers it with `params` (asserting 202) and returns its id.
pub async fn start_job(
    sidecar: &Sidecar,
    receiver: &Receiver,
    agent: &str,
    params: Value,
) -> String {
    let mut body = trigger(receiver, agent);
    body["params"] = params;
    sidecar.write_job(&body);
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, 202, "{answer}");
    body["job_id"].as_str().unwrap().to_owned()
}

/// Triggers a job whose folder is written first; asserts 202.
pub async fn run_job(sidecar: &Sidecar, receiver: &Receiver, body: &Value) -> Hit {
    sidecar.write_job(body);
    let (status, answer) = sidecar.post_trigger(body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    receiver.completion(body["job_id"].as_str().unwrap()).await
}

/// Asserts `doc` carries every property `schemas/v1/<file>` lists, required or not.
pub fn assert_all_properties(file: &str, doc: &Value) {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/v1").join(file)).unwrap(),
    )
    .unwrap();
    for key in schema["properties"].as_object().unwrap().keys() {
        assert!(
            doc.get(key).is_some(),
            "{file}: property {key} missing from {doc}"
        );
    }
}

/// Validates `doc` against `schemas/v1/<file>`.
pub fn assert_valid(file: &str, doc: &Value) {
    let text = std::fs::read_to_string(repo().join("schemas/v1").join(file)).unwrap();
    let validator = agent_sidecar::contract::schema::compile(&text).unwrap();
    if let Err(errors) = agent_sidecar::contract::schema::check(&validator, doc) {
        panic!("{file} invalid: {errors:?}\n{doc:#}");
    }
}

pub fn verifier() -> agent_sidecar::delivery::sign::Verifier {
    agent_sidecar::delivery::sign::Verifier::hs256(SECRET.as_bytes(), ISSUER, AUDIENCE)
}

/// Whether `pid` is a live process (a zombie is not).
pub fn alive(pid: u32) -> bool {
    // A zombie is dead; it only waits for a parent (or init) to reap it.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(") ")
                .next()
                .is_some_and(|rest| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// One sample of the Prometheus text format.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap();
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().unwrap(),
            }
        })
        .collect()
}

/// The value of `name` whose labels include `labels` (0 when absent).
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .find(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map_or(0.0, |s| s.value)
}

/// The states a job status document went through, oldest first.
pub fn states(job: &Value) -> Vec<String> {
    job["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap().to_owned())
        .collect()
}

/// One sample of the sidecar's `/metrics` (0 when absent).
pub async fn metric(sidecar: &Sidecar, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = sidecar.get_text("/metrics").await;
    value(&parse_metrics(&text), name, labels)
}

/// `GET /jobs/{id}` (asserting 200).
pub async fn job(sidecar: &Sidecar, job_id: &str) -> Value {
    let (status, job) = sidecar.get(&format!("/jobs/{job_id}")).await;
    assert_eq!(status, 200, "{job}");
    job
}

/// Waits until the job is in `state`; returns its status document.
pub async fn wait_state(sidecar: &Sidecar, job_id: &str, state: &str) -> Value {
    eventually(&format!("job {job_id} to be {state}"), || async {
        let job = job(sidecar, job_id).await;
        (job["state"] == state).then_some(job)
    })
    .await
}
