//! Large v2 manifest inputs: each file version is hashed once (a later trigger naming the same
//! version is answered from memory), a changed file is hashed again, and a file above
//! `server.max_input_bytes` is refused before any byte of it is read.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::*;

const INPUT_BYTES: u64 = 200 << 20;
const CAP: u64 = 300 << 20;
const HASHES: &str = "agent_sidecar_input_hashes_total";

/// Writes `bytes` of a repeated pattern to `path` quickly; returns its SHA-256.
fn write_pattern(path: &Path, bytes: u64) -> String {
    let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut file = std::fs::File::create(path).unwrap();
    let mut hasher = Sha256::new();
    for _ in 0..bytes / block.len() as u64 {
        file.write_all(&block).unwrap();
        hasher.update(&block);
    }
    agent_sidecar::jobdir::hex(&hasher.finalize())
}

/// A v2 manifest for `body` listing one input, `big.bin`.
fn manifest(body: &Value, bytes: u64, sha256: &str) -> String {
    json!({
        "schema_version": 2,
        "job_id": body["job_id"],
        "user_id": body["user_id"],
        "agent_name": body["agent_name"],
        "job_name": body["job_name"],
        "inputs": [{"path": "big.bin", "bytes": bytes, "sha256": sha256}]
    })
    .to_string()
}

/// A job of the sleeping agent (it reads nothing) whose `input/big.bin` is a hard link of
/// `original` (the same file version).
fn job_linking(sidecar: &Sidecar, receiver: &Receiver, original: &Path, sha256: &str) -> Value {
    let mut body = trigger(receiver, "napper");
    body["params"] = json!({"seconds": 0});
    let id = body["job_id"].as_str().unwrap();
    let folder = sidecar.write_manifest(id, &manifest(&body, INPUT_BYTES, sha256));
    std::fs::hard_link(original, folder.join("input/big.bin")).unwrap();
    body
}

async fn hashes(sidecar: &Sidecar) -> (f64, f64) {
    (
        metric(sidecar, HASHES, &[("source", "cache")]).await,
        metric(sidecar, HASHES, &[("source", "read")]).await,
    )
}

fn assert_named(answer: &Value, pointer: &str, says: &str) {
    let errors = answer["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["pointer"] == pointer
            && e["source"] == "manifest"
            && e["detail"].as_str().unwrap().contains(says)),
        "no {pointer} saying {says:?} in {answer}"
    );
}

#[tokio::test]
async fn a_large_input_is_hashed_once_per_version_and_a_change_is_hashed_again() {
    let receiver = Receiver::start().await;
    let cap = CAP.to_string();
    let sidecar = Sidecar::start_with_env(&receiver, &[("SERVER__MAX_INPUT_BYTES", &cap)]).await;
    let original = sidecar.dir.path().join("big.bin");
    let sha256 = write_pattern(&original, INPUT_BYTES);
    // Every link is made before the first trigger: a new link changes the file's ctime.
    let first = job_linking(&sidecar, &receiver, &original, &sha256);
    let again = job_linking(&sidecar, &receiver, &original, &sha256);
    let changed = job_linking(&sidecar, &receiver, &original, &sha256);
    assert_eq!(hashes(&sidecar).await, (0.0, 0.0));

    let (status, answer) = sidecar.post_trigger(&first).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        hashes(&sidecar).await,
        (0.0, 1.0),
        "the first trigger reads it"
    );
    let (status, answer) = sidecar.post_trigger(&again).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        hashes(&sidecar).await,
        (1.0, 1.0),
        "the same version is not read again"
    );

    // One byte changed in place, same size: a new version, read again and refused.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&original)
        .unwrap()
        .write_all_at(b"\xff", 12_345)
        .unwrap();
    let (status, answer) = sidecar.post_trigger(&changed).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_named(&answer, "/inputs/0/sha256", "the manifest says");
    assert_eq!(
        hashes(&sidecar).await,
        (1.0, 2.0),
        "a changed file is read again"
    );
    std::fs::remove_file(&original).unwrap();
}

#[tokio::test]
async fn an_input_above_the_cap_is_refused_naming_it_before_it_is_read() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with_env(&receiver, &[("SERVER__MAX_INPUT_BYTES", "1000")]).await;
    let mut body = trigger(&receiver, "napper");
    body["params"] = json!({"seconds": 0});
    let id = body["job_id"].as_str().unwrap();
    let folder = sidecar.write_manifest(id, &manifest(&body, 1001, &"0".repeat(64)));
    std::fs::write(folder.join("input/big.bin"), vec![7u8; 1001]).unwrap();
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_named(
        &answer,
        "/inputs/0/bytes",
        "input/big.bin is declared with 1001 bytes, above server.max_input_bytes (1000)",
    );
    assert_eq!(hashes(&sidecar).await, (0.0, 0.0), "never read");
}
