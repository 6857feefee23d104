//! The contract suite (`cargo test --test it contract::`): the Rails consumer (an app generated
//! with the `agent_sidecar` gem) on real Rails, the consumer check against it and against a
//! broken consumer, the gem's own tests, and the provider checked by an independent validator.

mod gem;
mod provider;
mod rails;
mod verify_consumer;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};

use crate::helpers::{client, repo};

/// The gem's checkout, which the generated app loads `agent_sidecar` from (no RubyGems).
pub fn gem_dir() -> PathBuf {
    repo().join("clients/ruby")
}

/// Makes a consumer app in `dir`: the skeleton in `contract-tests/consumer/rails/` (the
/// example domain only) with the gem's `agent_sidecar:install` and `agent_sidecar:handler`
/// generators run in it, as a team adopting the gem does.
pub fn generate_app(dir: &Path) {
    let out = Command::new("bash")
        .arg(repo().join("contract-tests/consumer/rails/generate"))
        .arg(dir)
        .env("AGENT_SIDECAR_GEM_PATH", gem_dir())
        .output()
        .expect("bash runs the generate script");
    assert!(
        out.status.success(),
        "generating the Rails app failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The app generated once per test process, under `CARGO_TARGET_TMPDIR/rails-consumer/<pid>`;
/// the folders of test processes that have exited are removed first.
fn generated_app() -> &'static Path {
    static APP: OnceLock<PathBuf> = OnceLock::new();
    APP.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rails-consumer");
        std::fs::create_dir_all(&root).unwrap();
        for entry in std::fs::read_dir(&root).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let alive = name
                .parse::<u32>()
                .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = root.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        generate_app(&dir);
        dir
    })
}

/// The generated consumer app served by puma on loopback.
pub struct Rails {
    pub origin: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rails {
    /// Boots puma on `listener` (bound by the test, handed over as puma's stdin, so no other
    /// process can take the port meanwhile) with these `AGENT_SIDECAR_*` settings and waits
    /// until it answers.
    pub async fn start(listener: std::net::TcpListener, env: &[(&str, String)]) -> Self {
        let addr = listener.local_addr().unwrap();
        let bind = format!("tcp://{addr}");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("puma.log");
        let child = Command::new("puma")
            .args(["-b", &bind, "-t", "1:8", "config.ru"])
            // Puma listens on an inherited descriptor given for the exact bind URL.
            .env("PUMA_INHERIT_0", format!("0:{bind}"))
            .current_dir(generated_app())
            .env("AGENT_SIDECAR_GEM_PATH", gem_dir())
            .env("RAILS_ENV", "production")
            .env("CONSUMER_DATABASE", dir.path().join("consumer.sqlite3"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("puma.err")).unwrap())
            .spawn()
            .expect("puma runs (.ci/run installs puma and the ruby-* Rails packages)");
        let mut rails = Self {
            origin: format!("http://{addr}"),
            child,
            log,
            _dir: dir,
        };
        rails.wait_until_up().await;
        rails
    }

    async fn wait_until_up(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(r) = client().get(format!("{}/up", self.origin)).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("puma exited with {status}:\n{}", self.logs());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "Rails did not answer /up:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Both of puma's logs, for a failing assertion.
    pub fn logs(&self) -> String {
        let err = self.log.with_file_name("puma.err");
        format!(
            "{}\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(err).unwrap_or_default()
        )
    }

    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        self.request(Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, serde_json::Value) {
        self.request(Method::GET, path, None).await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = client().request(method, format!("{}{path}", self.origin));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let r = request.send().await.unwrap();
        let status = r.status();
        (
            status,
            serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or_default(),
        )
    }
}

impl Drop for Rails {
    /// SIGTERM, and SIGKILL if puma has not exited within 10 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A listener on a loopback port for [`Rails::start`]: its address is known before Rails
/// boots, and the port stays taken until puma inherits it.
pub fn rails_listener() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// One request that went through the [`LossyProxy`].
#[derive(Debug, Clone)]
pub struct Passed {
    pub path: String,
    pub idempotency_key: Option<String>,
    pub body: serde_json::Value,
    /// What Rails answered.
    pub status: StatusCode,
    pub answer: serde_json::Value,
    /// Whether the answer was dropped (the sidecar got a 502 instead).
    pub lost: bool,
}

#[derive(Default)]
struct ProxyState {
    passed: Vec<Passed>,
}

/// Forwards callbacks to Rails and loses Rails' answer to the first completion of every job
/// (502, as a gateway does when the upstream's answer does not reach it): the handler has run,
/// the sidecar does not know, and re-delivers.
#[derive(Clone)]
pub struct LossyProxy {
    pub origin: String,
    state: Arc<Mutex<ProxyState>>,
}

impl LossyProxy {
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            origin: format!("http://{}", listener.local_addr().unwrap()),
            state: Arc::default(),
        };
        let handler = {
            let proxy = proxy.clone();
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let proxy = proxy.clone();
                let upstream = upstream.clone();
                async move { proxy.forward(&upstream, method, uri, headers, body).await }
            }
        };
        let app = axum::Router::new().fallback(handler);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        proxy
    }

    async fn forward(
        &self,
        upstream: &str,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = client().request(method, format!("{upstream}{uri}"));
        for (name, value) in &headers {
            if name != "host" && name != "content-length" {
                request = request.header(name, value);
            }
        }
        let response = request.body(body.clone()).send().await.unwrap();
        let status = response.status();
        let mut out_headers = HeaderMap::new();
        if let Some(ct) = response.headers().get("content-type") {
            out_headers.insert("content-type", ct.clone());
        }
        let answer = response.bytes().await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let path = uri.path().to_owned();
        let lost = {
            let mut state = self.state.lock().unwrap();
            let first = path.starts_with("/agents/completed/")
                && !state
                    .passed
                    .iter()
                    .any(|p| p.path == path && p.body["job_id"] == body["job_id"]);
            state.passed.push(Passed {
                path,
                idempotency_key: headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body,
                status,
                answer: serde_json::from_slice(&answer).unwrap_or_default(),
                lost: first,
            });
            first
        };
        if lost {
            (StatusCode::BAD_GATEWAY, HeaderMap::new(), Bytes::new())
        } else {
            (status, out_headers, answer)
        }
    }

    /// Everything that passed so far for `job_id`.
    pub fn passed_for(&self, job_id: &str) -> Vec<Passed> {
        self.state
            .lock()
            .unwrap()
            .passed
            .iter()
            .filter(|p| p.body["job_id"] == job_id)
            .cloned()
            .collect()
    }
}
