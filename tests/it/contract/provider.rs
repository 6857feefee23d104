//! The provider side: `contract-tests/provider/check_provider.py` runs this build's sidecar
//! against the fixtures and judges what it answers, sends and writes with Python `jsonschema`
//! and PyJWT, code that shares nothing with ours.

use std::process::Command;

use crate::helpers::repo;

#[test]
fn the_provider_keeps_the_contract_under_an_independent_validator() {
    let out = Command::new("python3")
        .arg(repo().join("contract-tests/provider/check_provider.py"))
        .args(["--binary", env!("CARGO_BIN_EXE_agent-sidecar")])
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("provider contract holds"), "{text}");
    let passed = text.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(passed > 100, "only {passed} checks ran:\n{text}");
}
