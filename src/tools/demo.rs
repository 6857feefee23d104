//! `agent-sidecar demo`: the README's first command.
//!
//! Writes the built-in example (config, agents, `shared_root.example/`) to a scratch folder
//! unless given a config, copies its `shared_root` beside it, starts the sidecar in-process on loopback
//! with a built-in receiver that verifies every callback's JWT, triggers the ready job, prints
//! its timeline, and says where the outputs are. Nothing outside the scratch folder is touched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::{Config, StoreBackend};
use crate::contract::{CompletionCallback, Manifest, ProgressCallback};
use crate::delivery::sign::Verifier;

/// How long the demo waits for its job before giving up.
const DEMO_TIMEOUT: Duration = Duration::from_secs(120);

/// A callback as the demo receiver saw it.
enum Received {
    Progress(ProgressCallback),
    Completion(Box<CompletionCallback>, bool),
    Rejected(String),
}

#[derive(Clone)]
struct Receiver {
    verifier: std::sync::Arc<Verifier>,
    tx: mpsc::UnboundedSender<Received>,
}

/// The example config, its agents and its ready job, built into the binary so the demo runs
/// from any folder (and from an installed binary): written to the scratch folder first.
const EXAMPLE: &[(&str, &[u8])] = &[
    (
        EXAMPLE_CONFIG,
        include_bytes!("../../agent-sidecar.example.toml"),
    ),
    (
        "examples/agents/summarizer.py",
        include_bytes!("../../examples/agents/summarizer.py"),
    ),
    (
        "examples/agents/summarizer.params.schema.json",
        include_bytes!("../../examples/agents/summarizer.params.schema.json"),
    ),
    (
        "examples/agents/failing.py",
        include_bytes!("../../examples/agents/failing.py"),
    ),
    (
        "examples/agents/sleeper.py",
        include_bytes!("../../examples/agents/sleeper.py"),
    ),
    (
        "shared_root.example/7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f/input/manifest.json",
        include_bytes!(
            "../../shared_root.example/7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f/input/manifest.json"
        ),
    ),
    (
        "shared_root.example/7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f/input/quarterly-notes.txt",
        include_bytes!(
            "../../shared_root.example/7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f/input/quarterly-notes.txt"
        ),
    ),
    (
        "shared_root.example/7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f/input/customer-feedback.txt",
        include_bytes!(
            "../../shared_root.example/7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f/input/customer-feedback.txt"
        ),
    ),
    (
        "shared_root.example/7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f/input/incident-review.txt",
        include_bytes!(
            "../../shared_root.example/7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f/input/incident-review.txt"
        ),
    ),
];

/// The example config's name among `EXAMPLE`.
const EXAMPLE_CONFIG: &str = "agent-sidecar.example.toml";

/// Writes the built-in example under `dir`; returns its config file.
fn write_example(dir: &Path) -> anyhow::Result<PathBuf> {
    for (name, bytes) in EXAMPLE {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir.join(EXAMPLE_CONFIG))
}

/// Runs the demo with the config at `config_path`, or with the built-in example; returns an
/// error if anything did not go through (the process then exits non-zero).
pub async fn run_demo(config_path: Option<&Path>) -> anyhow::Result<()> {
    crate::install_crypto_provider();
    let scratch = tempfile::Builder::new()
        .prefix("agent-sidecar-demo-")
        .tempdir()
        .context("cannot create a scratch folder")?
        .keep();
    let config_path = match config_path {
        Some(path) => path.to_owned(),
        None => write_example(&scratch.join("example"))?,
    };
    let mut config = Config::load(&config_path)?;
    let shared_root = scratch.join("shared_root");
    copy_dir(&config.storage.shared_root, &shared_root)
        .with_context(|| format!("cannot copy {}", config.storage.shared_root.display()))?;
    config.storage.shared_root = shared_root.clone();
    config.store.backend = StoreBackend::Sqlite(scratch.join("state.db"));

    let (receiver_url, mut events) = start_receiver(&config).await?;
    config.callbacks.allowed_origins = [receiver_url.clone()].into();
    config.callbacks.allow_http = true;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let sidecar_url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sidecar = tokio::spawn(crate::run(config, listener, async move {
        let _ = stopped.await;
    }));

    println!("agent-sidecar demo");
    println!("  scratch root  {}", scratch.display());
    println!("  sidecar       {sidecar_url}");
    println!("  receiver      {receiver_url} (verifies every callback's JWT and body_sha256)");
    println!();

    let (job_dir, manifest) = ready_job(&shared_root)?;
    let outcome = trigger_and_follow(&sidecar_url, &receiver_url, &manifest, &mut events).await;
    let _ = stop.send(());
    sidecar.await.context("sidecar task failed")??;
    outcome?;
    print_outputs(&job_dir.join("output"))?;
    Ok(())
}

async fn trigger_and_follow(
    sidecar_url: &str,
    receiver_url: &str,
    manifest: &Manifest,
    events: &mut mpsc::UnboundedReceiver<Received>,
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "job_id": manifest.job_id,
        "user_id": manifest.user_id,
        "agent_name": manifest.agent_name,
        "job_name": manifest.job_name,
        "params": manifest.params.clone().unwrap_or_default(),
        "callback_urls": {
            "progress": format!("{receiver_url}/agents/update/{}", manifest.user_id),
            "completion": format!("{receiver_url}/agents/completed/{}", manifest.user_id),
        }
    });
    println!(
        "-> POST /agents/trigger   job {}  agent {}  job_name {}",
        manifest.job_id, manifest.agent_name, manifest.job_name
    );
    let response = reqwest::Client::new()
        .post(format!("{sidecar_url}/agents/trigger"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body)?)
        .send()
        .await
        .context("trigger request failed")?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if status != StatusCode::ACCEPTED {
        bail!("trigger was refused with {status}: {text}");
    }
    println!("<- {status}  {text}");
    tokio::time::timeout(DEMO_TIMEOUT, follow(events))
        .await
        .context("the job did not complete within 120 s")?
}

async fn follow(events: &mut mpsc::UnboundedReceiver<Received>) -> anyhow::Result<()> {
    while let Some(event) = events.recv().await {
        match event {
            Received::Progress(p) => println!(
                "   progress seq {:<3} {:>5}  {:<12} {}   (JWT ok)",
                p.seq,
                p.percent.map(|v| format!("{v:.0}%")).unwrap_or_default(),
                p.stage.unwrap_or_default(),
                p.message.unwrap_or_default()
            ),
            Received::Completion(c, sig_ok) => {
                println!(
                    "   completion  status {}  job_name {}  duration {} ms   (JWT ok, body_sha256 ok, sig {})",
                    c.status,
                    c.job_name,
                    c.meta.duration_ms,
                    if sig_ok { "ok" } else { "INVALID" }
                );
                println!(
                    "   Rails dispatches {}.completed(job_id: \"{}\", status: \"{}\", output_uri: \"{}\", ...)",
                    c.job_name, c.job_id, c.status, c.output_uri
                );
                if !sig_ok {
                    bail!("the completion's sig did not verify");
                }
                return Ok(());
            }
            Received::Rejected(why) => bail!("a callback failed verification: {why}"),
        }
    }
    bail!("the receiver stopped")
}

async fn start_receiver(
    config: &Config,
) -> anyhow::Result<(String, mpsc::UnboundedReceiver<Received>)> {
    let jwt = &config.callbacks.jwt;
    let secret = jwt
        .secret
        .as_ref()
        .context("the demo verifies HS256 tokens: set callbacks.jwt.secret")?;
    let verifier = Verifier::hs256(secret.expose().as_bytes(), &jwt.issuer, &jwt.audience);
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Receiver {
        verifier: std::sync::Arc::new(verifier),
        tx,
    };
    let app = Router::new()
        .route("/agents/update/{user}", post(receive_progress))
        .route("/agents/completed/{user}", post(receive_completion))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    // The receiver lives as long as the demo process; it is ended with it.
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, rx))
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

async fn receive_progress(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let verified = r.verifier.verify_callback(authorization(&headers), &body);
    let event = match (verified, serde_json::from_slice::<ProgressCallback>(&body)) {
        (Ok(_), Ok(p)) => Received::Progress(p),
        (Err(e), _) => Received::Rejected(format!("progress: {e}")),
        (_, Err(e)) => Received::Rejected(format!("progress body: {e}")),
    };
    answer(&r, event)
}

async fn receive_completion(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let verified = r.verifier.verify_callback(authorization(&headers), &body);
    let event = match (
        verified,
        serde_json::from_slice::<CompletionCallback>(&body),
    ) {
        (Ok(_), Ok(c)) => {
            let sig_ok = r
                .verifier
                .verify_sig(&c.sig)
                .is_ok_and(|s| s.sub == c.job_id.to_string());
            Received::Completion(Box::new(c), sig_ok)
        }
        (Err(e), _) => Received::Rejected(format!("completion: {e}")),
        (_, Err(e)) => Received::Rejected(format!("completion body: {e}")),
    };
    answer(&r, event)
}

fn answer(r: &Receiver, event: Received) -> StatusCode {
    let status = match event {
        Received::Rejected(_) => StatusCode::UNAUTHORIZED,
        _ => StatusCode::OK,
    };
    let _ = r.tx.send(event);
    status
}

/// The first job folder under `root` whose manifest parses.
fn ready_job(root: &Path) -> anyhow::Result<(PathBuf, Manifest)> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    dirs.sort();
    for dir in dirs {
        if let Ok(bytes) = std::fs::read(dir.join("input/manifest.json")) {
            let manifest = crate::contract::parse_manifest(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {:?}", dir.display(), e.errors))?;
            return Ok((dir, manifest));
        }
    }
    bail!(
        "no job folder with input/manifest.json under {}",
        root.display()
    )
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn print_outputs(output: &Path) -> anyhow::Result<()> {
    println!();
    println!("outputs in {}", output.display());
    let mut files = Vec::new();
    collect_files(output, output, &mut files)?;
    files.sort();
    for (path, bytes) in files {
        println!("  {path:<32} {bytes:>8} bytes");
    }
    Ok(())
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let md = entry.metadata()?;
        if md.is_dir() {
            collect_files(root, &entry.path(), out)?;
        } else {
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap_or(&entry.path())
                .display()
                .to_string();
            out.push((rel, md.len()));
        }
    }
    Ok(())
}
