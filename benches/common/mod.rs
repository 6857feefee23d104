//! What every benchmark driver shares: starting the release sidecar as a real process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The HMAC secret of the drivers' configs (callbacks and inbound tokens alike).
pub const SECRET: &str = "bench-secret-0123456789abcdef-0123456789";

/// A size from the environment, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts `agent-sidecar serve` on `dir/sidecar.toml`; returns the process and its base URL
/// once it listens. The caller stops it (by pid) when done.
pub fn spawn_sidecar(dir: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(["serve", "--config"])
        .arg(dir.join("sidecar.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("agent-sidecar listening on ")
        .expect("sidecar started")
        .to_owned();
    (child, base)
}
