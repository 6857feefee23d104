//! What the repo ships for the platform team's Prometheus and Grafana (`contrib/`): the alert
//! rules pass their `promtool` unit tests, and every series the rules and the dashboard read is
//! one a real sidecar publishes, so a renamed metric cannot leave them silently empty.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::helpers::*;
use crate::ops::scrape;

fn contrib(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(file)
}

/// Every `agent_sidecar_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.match_indices("agent_sidecar_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect()
        })
        .collect()
}

/// Every PromQL expression of the dashboard's panels.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().expect("targets").iter())
        .map(|target| target["expr"].as_str().expect("expr").to_owned())
        .collect()
}

#[test]
fn the_alert_rules_pass_their_promtool_unit_tests() {
    let required = std::env::var_os("AGENT_SIDECAR_REQUIRE_PROMTOOL").is_some();
    let out = match std::process::Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(contrib("prometheus"))
        .output()
    {
        Ok(out) => out,
        Err(e) if !required => {
            eprintln!("skipped: promtool not found ({e}); Debian's `prometheus` package has it");
            return;
        }
        Err(e) => panic!("promtool: {e}"),
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dashboard_is_one_importable_document_with_a_query_in_every_panel() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(contrib("grafana/agent-sidecar.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dashboard["uid"], "agent-sidecar");
    let panels = dashboard["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for panel in panels {
        // Every query goes to the data source picked on import, never a hard-coded one.
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
    }
    assert!(
        dashboard_exprs(&dashboard)
            .iter()
            .all(|e| e.contains("agent_sidecar_"))
    );
}

#[tokio::test]
async fn every_series_the_alerts_and_the_dashboard_read_is_published() {
    let rules = std::fs::read_to_string(contrib("prometheus/alerts.yml")).unwrap();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(contrib("grafana/agent-sidecar.json")).unwrap(),
    )
    .unwrap();
    let mut wanted = metric_names(&rules);
    wanted.extend(
        dashboard_exprs(&dashboard)
            .iter()
            .flat_map(|e| metric_names(e)),
    );
    assert!(wanted.len() >= 10, "{wanted:?}");

    let receiver = Receiver::start().await;
    let sidecar = Sidecar::start(&receiver).await;
    // The heartbeat is set by the first sweeper pass; everything else from the start.
    let published = eventually("the first heartbeat", || async {
        let names: BTreeSet<String> = scrape(&sidecar).await.into_iter().map(|s| s.name).collect();
        names
            .contains("agent_sidecar_worker_heartbeat_timestamp_seconds")
            .then_some(names)
    })
    .await;
    let missing: Vec<&String> = wanted.difference(&published).collect();
    assert!(
        missing.is_empty(),
        "read by contrib/ but not published: {missing:?}"
    );
}
