//! The README's first command.

use std::process::Command;

use crate::helpers::repo;

#[test]
fn the_demo_runs_the_example_job_and_prints_its_timeline() {
    let out = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .arg("demo")
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("<- 202 Accepted"), "{stdout}");
    assert!(stdout.contains("progress seq"), "{stdout}");
    assert!(
        stdout.contains("completion  status completed  job_name ReportCompileJob"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ReportCompileJob.completed(job_id:"),
        "{stdout}"
    );
    assert!(stdout.contains("summary.json"), "{stdout}");
    assert!(
        !repo()
            .join("shared_root.example/7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f/output")
            .exists(),
        "the example stays clean"
    );
}
