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
