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

#[test]
fn check_config_takes_its_file_as_config_too() {
    let out = cli(&["check-config", "--config", "agent-sidecar.example.toml"]);
    assert!(out.status.success(), "{}", text_of(&out));
}

#[test]
fn check_config_fails_what_ready_would_fail_naming_each_check() {
    let missing_root = tempfile::tempdir().unwrap().path().join("gone");
    let (_dir, path) = write_config(
        "\n[agents.ghost]\ncommand = [\"/nonexistent/ghost-agent\"]\ntimeout = \"1m\"\n",
    );
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!(
            "shared_root = {:?}",
            repo().join("shared_root.example").display().to_string()
        ),
        &format!("shared_root = {:?}", missing_root.display().to_string()),
    );
    std::fs::write(&path, text).unwrap();
    let out = cli(&["check-config", &path]);
    assert_eq!(out.status.code(), Some(1));
    let t = text_of(&out);
    assert!(
        t.contains("agent_commands: ghost: /nonexistent/ghost-agent not found"),
        "{t}"
    );
    assert!(t.contains("shared_root: "), "{t}");
    assert_eq!(t.trim().lines().count(), 1, "{t}");
}

/// A job folder under a fresh shared_root with `notes.txt` and a v2 manifest declaring it
/// with `sha256`; returns the root and the manifest's path.
fn v2_job(sha256: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let job_id = uuid::Uuid::new_v4().to_string();
    let input = root.path().join(&job_id).join("input");
    std::fs::create_dir_all(&input).unwrap();
    let notes = b"The quarter went well.\n";
    std::fs::write(input.join("notes.txt"), notes).unwrap();
    let manifest = serde_json::json!({
        "schema_version": 2,
        "job_id": job_id,
        "user_id": "42",
        "agent_name": "summarizer_v2",
        "job_name": "ReportCompileJob",
        "inputs": [{"path": "notes.txt", "bytes": notes.len(), "sha256": sha256, "media_type": "text/plain"}]
    });
    std::fs::write(input.join("manifest.json"), manifest.to_string()).unwrap();
    (root, input.join("manifest.json"))
}

/// A digest no file here has.
const WRONG_SHA256: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn validate_checks_a_v2_manifests_files_as_the_trigger_does() {
    use sha2::Digest;
    let real = agent_sidecar::jobdir::hex(&sha2::Sha256::digest(b"The quarter went well.\n"));
    let (_root, manifest) = v2_job(&real);
    let out = cli(&["validate", manifest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text_of(&out));

    let (_root, manifest) = v2_job(WRONG_SHA256);
    let out = cli(&["validate", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text_of(&out).contains("  /inputs/0/sha256: input/notes.txt has SHA-256"),
        "{}",
        text_of(&out)
    );

    let (_root, manifest) = v2_job(&real);
    let notes = manifest.with_file_name("notes.txt");
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::remove_file(&notes).unwrap();
    std::os::unix::fs::symlink(outside.path(), &notes).unwrap();
    let out = cli(&["validate", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text_of(&out).contains("/inputs/0/path: input/notes.txt is a symlink"),
        "{}",
        text_of(&out)
    );
}

#[test]
fn the_demo_runs_from_any_folder_and_a_missing_config_is_named_once() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .arg("demo")
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text_of(&out));
    assert!(
        text_of(&out).contains("completion  status completed"),
        "{}",
        text_of(&out)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(["demo", "--config", "missing.toml"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let t = text_of(&out);
    assert!(t.contains("cannot read config file missing.toml"), "{t}");
    assert_eq!(t.matches("No such file or directory").count(), 1, "{t}");
}

#[test]
fn log_files_get_no_colour_codes() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let shared_root = dir.path().join("shared_root");
    std::fs::create_dir(&shared_root).unwrap();
    let config = dir.path().join("sidecar.toml");
    let text = Sidecar::config_text(
        &shared_root,
        &dir.path().join("state.db"),
        "http://127.0.0.1:9",
    );
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("sidecar.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent-sidecar"))
        .args(["serve", "--log-format", "text", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let t = std::fs::read_to_string(&log).unwrap();
    assert!(t.contains("listening"), "{t}");
    assert!(!t.contains('\u{1b}'), "{t:?}");
}

#[test]
fn the_example_config_has_every_section() {
    let example = std::fs::read_to_string(repo().join("agent-sidecar.example.toml")).unwrap();
    let sections = [
        "server",
        "storage",
        "store",
        "callbacks",
        "jobs",
        "sweeper",
        "logging",
    ];
    for section in sections {
        assert!(
            example.contains(&format!("\n[{section}]\n")),
            "[{section}] missing"
        );
    }
}
