//! Trigger latency against the size of a v2 manifest's input: a real release `agent-sidecar`
//! on a scratch root, each figure printed next to the same run's limits for the same bytes
//! (SHA-256 in this process, and `sha256sum`).
//!
//! `cargo bench --bench inputs` (BENCH_INPUT_MB, comma-separated, overrides the sizes: default
//! `1,16,256`). For each size: one file, hard-linked into two job folders before either is
//! triggered (a link changes the file's ctime); the first trigger reads it whole (`cold`), the
//! second names the same file version and is answered from the hash cache (`cached`).

// Shared by every driver; this one reads its sizes as a list, not with `env_usize`.
#[allow(dead_code)]
mod common;

use common::SECRET;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde_json::json;
use sha2::{Digest, Sha256};

/// Writes `mb` MiB of a repeated pattern; its SHA-256.
fn write_input(path: &Path, mb: usize) -> String {
    let block: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut file = std::fs::File::create(path).unwrap();
    let mut hasher = Sha256::new();
    for _ in 0..mb {
        file.write_all(&block).unwrap();
        hasher.update(&block);
    }
    file.sync_all().unwrap();
    agent_sidecar::jobdir::hex(&hasher.finalize())
}

/// Milliseconds to hash `path` in this process (the sidecar's own limit for these bytes).
fn sha256_in_process_ms(path: &Path) -> f64 {
    let started = Instant::now();
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    std::hint::black_box(hasher.finalize());
    started.elapsed().as_secs_f64() * 1000.0
}

/// Milliseconds `sha256sum` takes over `path`.
fn sha256sum_ms(path: &Path) -> f64 {
    let started = Instant::now();
    let done = Command::new("sha256sum")
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(done.success());
    started.elapsed().as_secs_f64() * 1000.0
}

/// Writes the config into `dir` and starts the sidecar on it.
fn start_sidecar(dir: &Path) -> (Child, String) {
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[storage]
shared_root = "{root}"
[store]
url = "sqlite://{db}"
[callbacks]
allowed_origins = ["http://127.0.0.1:9"]
allow_http = true
[callbacks.jwt]
issuer = "agent-sidecar"
audience = "rails"
secret = "{SECRET}"
[jobs]
allowed_job_names = ["BenchJob"]
[agents.noop]
command = ["/bin/true"]
timeout = "60s"
"#,
        root = dir.join("shared_root").display(),
        db = dir.join("state.db").display(),
    );
    std::fs::write(dir.join("sidecar.toml"), config).unwrap();
    common::spawn_sidecar(dir)
}

/// Writes a job folder whose v2 manifest lists `input.bin`, a hard link of `original`; the
/// trigger body.
fn job(root: &Path, original: &Path, bytes: u64, sha256: &str) -> serde_json::Value {
    let id = uuid::Uuid::new_v4().to_string();
    let input = root.join(&id).join("input");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::hard_link(original, input.join("input.bin")).unwrap();
    let manifest = json!({
        "schema_version": 2, "job_id": id, "user_id": "1", "agent_name": "noop",
        "job_name": "BenchJob",
        "inputs": [{"path": "input.bin", "bytes": bytes, "sha256": sha256}],
    });
    std::fs::write(input.join("manifest.json"), manifest.to_string()).unwrap();
    json!({
        "job_id": id, "user_id": "1", "agent_name": "noop", "job_name": "BenchJob",
        "callback_urls": {"progress": "http://127.0.0.1:9/p", "completion": "http://127.0.0.1:9/c"},
    })
}

/// Milliseconds from sending the trigger to its 202.
async fn trigger_ms(client: &reqwest::Client, base: &str, body: &serde_json::Value) -> f64 {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/agents/trigger"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    elapsed
}

#[tokio::main]
async fn main() {
    agent_sidecar::install_crypto_provider();
    let sizes: Vec<usize> = std::env::var("BENCH_INPUT_MB")
        .unwrap_or_else(|_| "1,16,256".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let scratch = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp");
    std::fs::create_dir_all(&scratch).unwrap();
    let dir = tempfile::tempdir_in(&scratch).unwrap();
    let root = dir.path().join("shared_root");
    std::fs::create_dir_all(&root).unwrap();
    let (mut child, base) = start_sidecar(dir.path());
    let client = reqwest::Client::new();
    println!(
        "\n{:>8} {:>14} {:>14} {:>18} {:>14} {:>12}",
        "MiB", "cold 202 ms", "cached 202 ms", "in-process sha ms", "sha256sum ms", "cold/limit"
    );
    for mb in sizes {
        let original = dir.path().join(format!("input-{mb}.bin"));
        let sha256 = write_input(&original, mb);
        let bytes = (mb as u64) << 20;
        let first = job(&root, &original, bytes, &sha256);
        let second = job(&root, &original, bytes, &sha256);
        let limit = sha256_in_process_ms(&original);
        let sum = sha256sum_ms(&original);
        let cold = trigger_ms(&client, &base, &first).await;
        let cached = trigger_ms(&client, &base, &second).await;
        println!(
            "{mb:>8} {cold:>14.2} {cached:>14.2} {limit:>18.2} {sum:>14.2} {:>12.2}",
            cold / limit
        );
        let line = json!({"input_mib": mb, "cold_ms": cold, "cached_ms": cached,
            "sha256_in_process_ms": limit, "sha256sum_ms": sum});
        println!("{line}");
        std::fs::remove_file(&original).unwrap();
        for body in [&first, &second] {
            let id = body["job_id"].as_str().unwrap();
            let _ = std::fs::remove_file(root.join(id).join("input/input.bin"));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
