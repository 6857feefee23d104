//! The `agent_sidecar` gem on its own: its minitest suite, `gem build`, and the tests its
//! generators write into an app, run in a freshly generated one.

use std::process::Command;

use super::{gem_dir, generate_app};

/// Runs `program args` in `dir`; panics with both outputs unless it succeeds.
fn run_ok(dir: &std::path::Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("AGENT_SIDECAR_GEM_PATH", gem_dir())
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

#[test]
fn the_gems_minitest_suite_passes() {
    let report = run_ok(
        &gem_dir(),
        "ruby",
        &[
            "-Ilib",
            "-Itest",
            "-e",
            "Dir['test/**/*_test.rb'].sort.each { |f| require File.expand_path(f) }",
        ],
    );
    assert!(report.contains(" 0 failures, 0 errors"), "{report}");
}

#[test]
fn gem_build_makes_the_gem() {
    let out = tempfile::tempdir().unwrap();
    let gem = out.path().join("agent_sidecar.gem");
    let report = run_ok(
        &gem_dir(),
        "gem",
        &[
            "build",
            "agent_sidecar.gemspec",
            "--output",
            gem.to_str().unwrap(),
        ],
    );
    assert!(gem.is_file(), "{report}");
    // The built gem carries the engine, the generators and their templates.
    let files = Command::new("sh")
        .args(["-c", "tar -xOf agent_sidecar.gem data.tar.gz | tar -tzf -"])
        .current_dir(out.path())
        .output()
        .unwrap();
    let files = String::from_utf8_lossy(&files.stdout);
    for path in [
        "lib/agent_sidecar/engine.rb",
        "app/controllers/agent_sidecar/callbacks_controller.rb",
        "lib/generators/agent_sidecar/install/templates/create_agent_sidecar_jobs.rb.tt",
        "config/routes.rb",
    ] {
        assert!(files.lines().any(|l| l == path), "{path} missing:\n{files}");
    }
}

#[test]
fn the_tests_the_generators_write_pass_in_the_generated_app() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    generate_app(&app);
    let report = run_ok(&app, "ruby", &["bin/rails", "test"]);
    assert!(
        report.contains("2 runs") && report.contains(" 0 failures, 0 errors"),
        "{report}"
    );
}

/// The gem's client against a real sidecar (no Rails app): trigger writes the folder and a v2
/// manifest and POSTs with a minted token, the SSE reader follows the job to its end, and
/// status, list and cancel answer as the API does.
#[tokio::test]
async fn the_gems_client_triggers_follows_and_lists_against_a_real_sidecar() {
    use crate::helpers::{Receiver, Sidecar};
    const SECRET: &str = "gem-client-secret-0123456789abcdef-0123";
    let receiver = Receiver::start().await;
    let auth = format!(
        "\n[server.auth]\nissuer = \"rails\"\naudience = \"agent-sidecar\"\nsecret = \"{SECRET}\"\n"
    );
    let sidecar = Sidecar::start_with(&receiver, &[], &auth).await;
    let script = r##"
require "agent_sidecar"
AgentSidecar.configure do |c|
  c.sidecar_url = ENV.fetch("SIDECAR_URL")
  c.api_secret = ENV.fetch("API_SECRET")
  c.shared_root = ENV.fetch("SHARED_ROOT")
end
origin = ENV.fetch("RECEIVER")
urls = { progress: "#{origin}/progress", completion: "#{origin}/completion" }
answer = AgentSidecar.trigger(agent: "ticker", job_name: "ReportCompileJob", user: 42,
                              params: { count: 5 }, inputs: { "notes.txt" => "hello" },
                              callback_urls: urls)
job_id = answer["job_id"]
seen = []
AgentSidecar.events(job_id) { |event| seen << event }
states = seen.map { |e| e[:data].is_a?(Hash) ? e[:data]["state"] : nil }.compact
progress = seen.count { |e| e[:data].is_a?(Hash) && e[:data]["type"] == "progress" }
listed = AgentSidecar.list(state: "completed")
ids = (listed["jobs"] || listed).map { |j| j["job_id"] }
sleeper = AgentSidecar.trigger(agent: "napper", job_name: "ReportCompileJob", user: 42,
                               callback_urls: urls)
canceled = AgentSidecar.cancel(sleeper["job_id"])
begin
  AgentSidecar.status("00000000-0000-4000-8000-000000000000")
  missing = nil
rescue AgentSidecar::Refused => e
  missing = e.status
end
puts JSON.generate(job_id: job_id, accepted: answer["status"], states: states, progress: progress,
                   status: AgentSidecar.status(job_id)["state"], listed: ids.include?(job_id),
                   cancel: canceled["job_id"] == sleeper["job_id"], missing: missing)
"##;
    let out = tokio::process::Command::new("ruby")
        .args([
            "-I",
            &gem_dir().join("lib").display().to_string(),
            "-e",
            script,
        ])
        .env("SIDECAR_URL", &sidecar.base)
        .env("API_SECRET", SECRET)
        .env("SHARED_ROOT", &sidecar.shared_root)
        .env("RECEIVER", &receiver.origin)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{text}{err}");
    let report: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {text}{err}"));
    assert_eq!(report["accepted"], "queued", "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    assert!(report["progress"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(
        report["states"],
        serde_json::json!(["received", "queued", "in_progress", "completed"]),
        "the SSE reader follows the job to its end: {report}"
    );
    assert_eq!(report["listed"], true, "{report}");
    assert_eq!(report["cancel"], true, "{report}");
    assert_eq!(report["missing"], 404, "{report}");
    let job_id = report["job_id"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sidecar.job_dir(job_id).join("input/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["schema_version"], 2);
    assert_eq!(manifest["inputs"][0]["bytes"], 5, "{manifest}");
    receiver.completion(job_id).await;
}
