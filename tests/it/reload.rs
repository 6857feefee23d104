//! Reloads on content changes only: reading the config file (a `cat`, `check-config`, the
//! reload's own read) never starts one, and a ConfigMap-style symlink swap does.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::helpers::*;

const RELOADED: &str = "keys, certificates and the agent registry reloaded";

fn reloads(sidecar: &Sidecar) -> usize {
    sidecar.log().matches(RELOADED).count()
}

async fn wait_reloads(sidecar: &Sidecar, n: usize) {
    eventually(&format!("{n} reload(s)"), || async {
        (reloads(sidecar) >= n).then_some(())
    })
    .await;
}

/// Long enough for a reload loop to show itself: the watcher debounces 500 ms, and the loop
/// this guards against reloaded twice a second.
async fn quiet_window() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn reading_the_config_never_reloads_and_a_content_change_reloads_once() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    for _ in 0..3 {
        std::fs::read(&sidecar.config_path).unwrap();
    }
    let checked = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(["check-config", "--config"])
        .arg(&sidecar.config_path)
        .output()
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");
    // Same bytes written again, and a touch: no content change.
    let text = std::fs::read(&sidecar.config_path).unwrap();
    std::fs::write(&sidecar.config_path, &text).unwrap();
    Command::new("touch")
        .arg(&sidecar.config_path)
        .status()
        .unwrap();
    quiet_window().await;
    assert_eq!(reloads(&sidecar), 0, "{}", sidecar.log());

    let mut changed = text.clone();
    changed.extend_from_slice(b"\n# edited\n");
    std::fs::write(&sidecar.config_path, changed).unwrap();
    wait_reloads(&sidecar, 1).await;
    quiet_window().await;
    assert_eq!(reloads(&sidecar), 1, "{}", sidecar.log());
}

/// Lays out `dir` the way a Kubernetes ConfigMap volume does: `sidecar.toml` →
/// `..data/sidecar.toml`, `..data` → `..<version>`.
fn configmap_version(dir: &Path, version: &str, text: &str) {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir(&versioned).unwrap();
    std::fs::write(versioned.join("sidecar.toml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[tokio::test]
async fn a_configmap_symlink_swap_reloads_the_new_content() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let shared_root = dir.path().join("shared_root");
    std::fs::create_dir(&shared_root).unwrap();
    let configmap = dir.path().join("configmap");
    std::fs::create_dir(&configmap).unwrap();
    let base = Sidecar::config_text(&shared_root, &dir.path().join("state.db"), &receiver.origin);
    configmap_version(&configmap, "v1", &base);
    let config_path = configmap.join("sidecar.toml");
    std::os::unix::fs::symlink("..data/sidecar.toml", &config_path).unwrap();
    let sidecar = Sidecar::start_on_config(dir, shared_root, config_path);

    let mut body = trigger(&receiver, "late_agent");
    body["params"] = serde_json::json!({"seconds": 0});
    sidecar.write_job(&body);
    assert_eq!(sidecar.post_trigger(&body).await.0, 422);

    let script = repo().join("examples/agents/sleeper.py");
    let added = format!(
        "{base}\n[agents.late_agent]\ncommand = [\"python3\", {:?}]\ntimeout = \"60s\"\n",
        script.display().to_string()
    );
    configmap_version(&configmap, "v2", &added);
    std::fs::remove_dir_all(configmap.join("..v1")).unwrap();
    wait_reloads(&sidecar, 1).await;
    let (status, answer) = sidecar.post_trigger(&body).await;
    assert_eq!(status, 202, "{answer}");
    receiver.completion(body["job_id"].as_str().unwrap()).await;
    assert_eq!(reloads(&sidecar), 1, "{}", sidecar.log());
}

fn keeper(timeout: &str) -> String {
    let script = repo().join("examples/agents/sleeper.py");
    format!(
        "\n[agents.keeper]\ncommand = [\"python3\", {:?}]\ntimeout = \"{timeout}\"\n",
        script.display().to_string()
    )
}

#[tokio::test]
async fn a_run_in_flight_keeps_the_agent_definition_it_started_with() {
    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start_with(&receiver, &[], &keeper("60s")).await;
    let running = start_job(
        &sidecar,
        &receiver,
        "keeper",
        serde_json::json!({"seconds": 5}),
    )
    .await;
    wait_state(&sidecar, &running, "in_progress").await;
    sidecar.reconfigure(&receiver, &keeper("300ms"));
    wait_reloads(&sidecar, 1).await;
    assert_eq!(
        job(&sidecar, &running).await["state"],
        "in_progress",
        "reloaded mid-run"
    );
    // A run started after the reload gets the new timeout...
    let after = start_job(
        &sidecar,
        &receiver,
        "keeper",
        serde_json::json!({"seconds": 30}),
    )
    .await;
    let c = receiver.completion(&after).await.json();
    assert_eq!(c["status"], "timed_out", "{c}");
    // ...the one in flight keeps its 60 s.
    let c = receiver.completion(&running).await.json();
    assert_eq!(c["status"], "completed", "{c}");
}
