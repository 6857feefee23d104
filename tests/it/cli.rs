//! The command line: `validate` and `check-config` say what is wrong in readable lines.

use std::process::{Command, Output};

use crate::helpers::*;

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

fn text_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn validate_accepts_the_example_manifest() {
    let out = cli(&[
        "validate",
        "shared_root.example/7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f/input/manifest.json",
    ]);
    assert!(out.status.success(), "{}", text_of(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "valid (schema v1)"
    );
}

#[test]
fn validate_lists_every_error_with_its_pointer_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.json");
    std::fs::write(
        &path,
        r#"{"schema_version": 1, "job_id": "nope", "user_id": "42", "agent_name": "Bad"}"#,
    )
    .unwrap();
    let out = cli(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let t = text_of(&out);
    for pointer in ["/job_id", "/agent_name", "/job_name"] {
        assert!(
            t.contains(&format!("  {pointer}: ")),
            "{pointer} missing in {t}"
        );
    }
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn validate_names_an_unknown_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.json");
    std::fs::write(&path, r#"{"schema_version": 3}"#).unwrap();
    let out = cli(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text_of(&out).contains("unknown schema version 3; known versions: 1, 2"),
        "{}",
        text_of(&out)
    );
}

#[test]
fn check_config_accepts_the_example() {
    let out = cli(&["check-config", "agent-sidecar.example.toml"]);
    assert!(out.status.success(), "{}", text_of(&out));
    assert!(text_of(&out).contains("3 agent(s)"), "{}", text_of(&out));
}

fn write_config(extra: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(repo().join("agent-sidecar.example.toml")).unwrap();
    let text = example
        .replace("./examples", &repo().join("examples").display().to_string())
        .replace(
            "\"examples/agents",
            &format!("\"{}/examples/agents", repo().display()),
        )
        .replace(
            "shared_root = \"shared_root.example\"",
            &format!(
                "shared_root = {:?}",
                repo().join("shared_root.example").display().to_string()
            ),
        )
        + extra;
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

#[test]
fn check_config_names_an_unknown_key_in_one_line() {
    let (_dir, path) = write_config("\n[server2]\nlisten = 1\n");
    let out = cli(&["check-config", &path]);
    assert_eq!(out.status.code(), Some(1));
    let t = text_of(&out);
    assert!(t.contains("server2"), "{t}");
    assert_eq!(t.trim().lines().count(), 1, "{t}");
}

#[test]
fn environment_overrides_are_applied_and_checked() {
    let (_dir, path) = write_config("");
    let out = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(["check-config", &path])
        .env("AGENT_SIDECAR__JOBS__MAX_CONCURRENT", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text_of(&out).contains("jobs.max_concurrent"),
        "{}",
        text_of(&out)
    );
}

#[test]
fn a_file_mode_that_locks_the_sidecar_out_is_refused_naming_the_key() {
    let (_dir, path) = write_config("");
    let check = |key: &str, value: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
            .args(["check-config", &path])
            .env(format!("AGENT_SIDECAR__STORAGE__{key}"), value)
            .output()
            .unwrap();
        (out.status.code(), text_of(&out))
    };
    let (code, text) = check("FILE_MODE", "0440");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("storage.file_mode") && text.contains("0600"),
        "{text}"
    );
    let (code, text) = check("DIR_MODE", "0799");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("storage.dir_mode") && text.contains("octal"),
        "{text}"
    );
    assert_eq!(check("FILE_MODE", "0660").0, Some(0));
}

#[test]
fn a_short_secret_is_refused_and_never_printed() {
    let (_dir, path) = write_config("");
    let out = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(["check-config", &path])
        .env(
            "AGENT_SIDECAR__CALLBACKS__JWT__SECRET",
            "short-secret-value",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let t = text_of(&out);
    assert!(t.contains("callbacks.jwt.secret"), "{t}");
    assert!(!t.contains("short-secret-value"), "{t}");
}

#[test]
fn a_missing_config_file_is_one_readable_line() {
    let out = cli(&["check-config", "/nonexistent/agent-sidecar.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let t = text_of(&out);
    assert!(
        t.starts_with("error: cannot read config file /nonexistent/agent-sidecar.toml"),
        "{t}"
    );
}

#[test]
fn the_jwt_secret_can_come_from_a_file() {
    let (dir, path) = write_config("");
    let secret_file = dir.path().join("jwt.secret");
    std::fs::write(&secret_file, "a-secret-from-a-file-0123456789abcdef\n").unwrap();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "secret = \"example-secret-change-me-0123456789abcdef\"",
        &format!("secret_file = {:?}", secret_file.display().to_string()),
    );
    std::fs::write(&path, text).unwrap();
    let out = cli(&["check-config", &path]);
    assert!(out.status.success(), "{}", text_of(&out));
    std::fs::write(&secret_file, "short\n").unwrap();
    let out = cli(&["check-config", &path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text_of(&out).contains("callbacks.jwt.secret"),
        "{}",
        text_of(&out)
    );
}
