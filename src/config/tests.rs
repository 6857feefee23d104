//! The config loaded from real files: every default as documented, and every validation rule
//! refusing with its dotted key and its reason.

use super::*;

/// A valid config with only the required keys, as `(section, lines)`.
fn base() -> Vec<(String, Vec<String>)> {
    let sections: [(&str, &[&str]); 7] = [
        ("storage", &[r#"shared_root = "shared""#]),
        (
            "store",
            &[r#"url = "sqlite://state.db""#, r#"node_id = "n1""#],
        ),
        (
            "callbacks",
            &[r#"allowed_origins = ["https://rails.example"]"#],
        ),
        (
            "callbacks.jwt",
            &[
                r#"issuer = "sidecar""#,
                r#"audience = "rails""#,
                r#"secret = "0123456789abcdef0123456789abcdef""#,
            ],
        ),
        ("jobs", &[r#"allowed_job_names = ["ReportJob"]"#]),
        (
            "agents.summarizer",
            &[r#"command = ["/bin/true"]"#, r#"timeout = "1m""#],
        ),
        ("sweeper", &[]),
    ];
    sections
        .iter()
        .map(|(name, lines)| {
            let lines = lines.iter().map(|l| l.to_string()).collect();
            (name.to_string(), lines)
        })
        .collect()
}

/// The base config with `edits` applied, as TOML: `(section, "key = value")` sets a key (adding
/// the section if needed), `(section, "-key")` removes one, `("-section", "")` a section.
fn toml_with(edits: &[(&str, &str)]) -> String {
    let mut sections = base();
    for &(section, edit) in edits {
        if let Some(gone) = section.strip_prefix('-') {
            sections.retain(|(name, _)| name != gone);
            continue;
        }
        let at = match sections.iter().position(|(name, _)| name == section) {
            Some(at) => at,
            None => {
                sections.push((section.to_owned(), Vec::new()));
                sections.len() - 1
            }
        };
        let lines = &mut sections[at].1;
        let key = edit
            .trim_start_matches('-')
            .split(" = ")
            .next()
            .unwrap_or_default();
        lines.retain(|line| line.split(" = ").next() != Some(key));
        if !edit.starts_with('-') {
            lines.push(edit.to_owned());
        }
    }
    sections
        .iter()
        .map(|(name, lines)| format!("[{name}]\n{}\n", lines.join("\n")))
        .collect()
}

fn load(edits: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent-sidecar.toml");
    std::fs::write(&path, toml_with(edits)).unwrap();
    Config::load(&path)
}

#[test]
fn a_config_with_only_the_required_keys_gets_every_documented_default() {
    let config = load(&[]).unwrap();

    let base = config.source.as_ref().unwrap().parent().unwrap().to_owned();
    let s = &config.server;
    assert_eq!(s.listen, "127.0.0.1:8780".parse().unwrap());
    assert_eq!(s.public_url, None);
    assert_eq!((s.max_body_bytes, s.send_buffer_bytes), (262_144, 262_144));
    assert_eq!(s.max_input_bytes, None);
    assert_eq!(s.write_timeout, Duration::from_secs(30));
    assert!(s.auth.is_none() && s.tls.is_none());
    let st = &config.storage;
    assert_eq!(st.shared_root, base.join("shared"));
    assert_eq!(st.output_uri_prefix, None);
    assert_eq!(st.status_min_interval, Duration::from_millis(250));
    assert!(!st.folder_triggers);
    assert_eq!(st.rescan_interval, Duration::from_secs(30));
    assert_eq!((st.modes.file, st.modes.dir), (0o644, 0o755));
    let store = &config.store;
    assert_eq!(store.backend, StoreBackend::Sqlite(base.join("state.db")));
    assert_eq!(store.node_id, "n1");
    assert_eq!((store.lease, store.pool_size), (Duration::from_secs(30), 8));
    let c = &config.callbacks;
    assert_eq!(
        c.allowed_origins.iter().collect::<Vec<_>>(),
        ["https://rails.example"]
    );
    assert!(!c.allow_http);
    assert_eq!(c.timeout, Duration::from_secs(30));
    assert_eq!(c.progress_min_interval, Duration::from_millis(100));
    assert_eq!(c.progress_retries, 2);
    let schedule: Vec<u64> = c.retry_schedule.iter().map(Duration::as_secs).collect();
    assert_eq!(schedule, [0, 5, 300, 1800, 7200, 18_000, 36_000, 36_000]);
    assert_eq!(c.max_age, Duration::from_secs(3 * 24 * 3600));
    assert_eq!(c.output_index_max_bytes, 65_536);
    assert!(c.allowed_networks.is_empty());
    assert_eq!((c.breaker_threshold, c.per_destination_concurrency), (5, 8));
    assert_eq!(c.breaker_cooldown, Duration::from_secs(30));
    assert_eq!(c.jwt.ttl, Duration::from_secs(300));
    assert!(c.jwt.keys.is_empty() && c.jwt.secret.is_some());
    assert!(c.tls.ca_file.is_none() && c.tls.client_cert_file.is_none());
    assert!(!c.standard_webhooks.enabled && c.standard_webhooks.secrets.is_empty());
    let j = &config.jobs;
    assert_eq!(
        (j.max_concurrent, j.max_line_bytes, j.events_per_job),
        (4, 16_384, 1000)
    );
    assert_eq!(j.kill_grace, Duration::from_secs(10));
    assert_eq!(j.drain_timeout, Duration::from_secs(30));
    assert_eq!(j.max_queue_age, None);
    assert_eq!(j.priority_aging, Duration::from_secs(60));
    let sw = &config.sweeper;
    assert_eq!(sw.interval, Duration::from_secs(5));
    assert_eq!(sw.retention, Duration::from_secs(7 * 24 * 3600));
    assert!(!sw.prune_folders);
    assert_eq!(config.logging.format, LogFormat::Text);
    assert_eq!(config.logging.level, "info");
    let agent = config.agents.get(&"summarizer".parse().unwrap()).unwrap();
    assert_eq!(agent.command, ["/bin/true"]);
    assert_eq!(
        (agent.timeout, agent.max_concurrent),
        (Duration::from_secs(60), 4)
    );
    assert_eq!((agent.stale_after, agent.max_attempts), (None, 3));
    assert_eq!(
        agent.inline_artifacts,
        crate::config::InlineArtifacts::default()
    );
    assert_eq!(agent.inline_artifacts.under_bytes, 65_536);
    assert_eq!(agent.on_restart, OnRestart::Requeue);
    assert!(agent.env.is_empty() && agent.params_schema.is_none());
    assert_eq!(agent.retry, crate::retry::RetryPolicy::default());
    assert_eq!(agent.retry.attempts, 1, "no retries unless asked for");
}

#[test]
fn a_retry_policy_reads_as_written() {
    let config = load(&[
        ("agents.summarizer.retry", "attempts = 4"),
        ("agents.summarizer.retry", "on_exit_codes = [75, 69]"),
        ("agents.summarizer.retry", "on_timeout = true"),
        ("agents.summarizer.retry", r#"base = "2s""#),
        ("agents.summarizer.retry", r#"max = "1m""#),
        ("agents.summarizer.retry", r#"jitter = "equal""#),
    ])
    .unwrap();
    let agent = config.agents.get(&"summarizer".parse().unwrap()).unwrap();
    let retry = &agent.retry;
    assert_eq!(retry.attempts, 4);
    assert_eq!(retry.on_exit_codes, [69, 75].into());
    assert!(retry.on_timeout && !retry.on_stale && retry.on_request);
    assert_eq!(
        retry.backoff,
        crate::retry::Backoff::Exponential {
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
            jitter: crate::retry::Jitter::Equal,
        }
    );
    let listed = load(&[("agents.summarizer.retry", r#"delays = ["5s", "1m"]"#)]).unwrap();
    let agent = listed.agents.get(&"summarizer".parse().unwrap()).unwrap();
    assert_eq!(
        agent.retry.backoff,
        crate::retry::Backoff::List(vec![Duration::from_secs(5), Duration::from_secs(60)])
    );
}

#[test]
fn defaults_of_an_optional_section_apply_to_the_keys_it_leaves_out() {
    let config = load(&[
        ("server", r#"listen = "127.0.0.1:0""#),
        (
            "server.auth",
            r#"secret = "0123456789abcdef0123456789abcdef""#,
        ),
        ("server.auth", r#"issuer = "rails""#),
        ("server.auth", r#"audience = "sidecar""#),
        ("sweeper", "prune_folders = true"),
        ("logging", r#"format = "json""#),
    ])
    .unwrap();

    assert_eq!(config.server.max_body_bytes, 262_144);
    let auth = config.server.auth.unwrap();
    assert_eq!(auth.leeway, Duration::from_secs(30));
    assert_eq!(
        auth.public_paths,
        ["/health", "/ready", "/metrics", "/openapi.json"]
    );
    assert_eq!(auth.scope_claim, "agents");
    assert_eq!(config.sweeper.interval, Duration::from_secs(5));
    assert_eq!(config.logging.level, "info");
}

/// Edits to the base config: `(section, "key = value")` (see [`toml_with`]).
type Edits = &'static [(&'static str, &'static str)];

/// Every rule of `validate`: the edits that break it, the dotted key the refusal must name,
/// and a piece of its reason.
const RULES: &[(Edits, &str, &str)] = &[
    (
        &[("server", r#"listen = "nowhere""#)],
        "server.listen",
        "expected host:port",
    ),
    (
        &[("server", r#"public_url = "::""#)],
        "server.public_url",
        "",
    ),
    (
        &[("server", r#"write_timeout = "0s""#)],
        "server.write_timeout",
        "more than 0s",
    ),
    (
        &[("server", "max_input_bytes = 0")],
        "server.max_input_bytes",
        "more than 0",
    ),
    (
        &[("server", "send_buffer_bytes = 100")],
        "server.send_buffer_bytes",
        "at least 4096",
    ),
    (
        &[
            ("server.tls", r#"cert_file = "c.pem""#),
            ("server.tls", r#"key_file = "k.pem""#),
            ("server.tls", "require_client_cert = true"),
        ],
        "server.tls.require_client_cert",
        "needs server.tls.client_ca_file",
    ),
    (
        &[
            ("server.auth", r#"issuer = "i""#),
            ("server.auth", r#"audience = "a""#),
        ],
        "server.auth",
        "needs a secret (HS256) or public_keys",
    ),
    (
        &[
            ("server.auth", r#"issuer = "i""#),
            ("server.auth", r#"audience = "a""#),
            ("server.auth", r#"secret = "short""#),
        ],
        "server.auth.secret",
        "at least 32 bytes",
    ),
    (
        &[
            ("server.auth", r#"issuer = "i""#),
            ("server.auth", r#"audience = "a""#),
            (
                "server.auth",
                r#"secret = "0123456789abcdef0123456789abcdef""#,
            ),
            ("server.auth", r#"secret_file = "secret.txt""#),
        ],
        "server.auth",
        "either secret or secret_file, not both",
    ),
    (
        &[
            ("server.auth", r#"issuer = "i""#),
            ("server.auth", r#"audience = "a""#),
            ("server.auth", r#"secret_file = "missing.txt""#),
        ],
        "server.auth.secret_file",
        "missing.txt",
    ),
    (
        &[("storage", r#"rescan_interval = "0s""#)],
        "storage.rescan_interval",
        "more than 0s",
    ),
    (
        &[("storage", r#"status_min_interval = "0s""#)],
        "storage.status_min_interval",
        "more than 0s",
    ),
    (
        &[("storage", r#"file_mode = "0999""#)],
        "storage.file_mode",
        "octal mode",
    ),
    (
        &[("storage", r#"file_mode = "0400""#)],
        "storage.file_mode",
        "at least 0600",
    ),
    (
        &[("storage", "dir_mode = 600")],
        "storage.dir_mode",
        "at least 0700",
    ),
    (
        &[("store", r#"url = "mysql://db""#)],
        "store.url",
        "must start with sqlite://",
    ),
    (
        &[("store", r#"url = "sqlite://""#)],
        "store.url",
        "names no database file",
    ),
    (
        &[("store", r#"url = "postgres://u:hunter2@db:port/x""#)],
        "store.url",
        "is not a valid PostgreSQL URL",
    ),
    (
        &[("store", r#"lease = "500ms""#)],
        "store.lease",
        "at least 1s",
    ),
    (
        &[("store", "pool_size = 0")],
        "store.pool_size",
        "at least 1",
    ),
    (
        &[("store", r#"node_id = """#)],
        "store.node_id",
        "1 to 200 printable characters",
    ),
    (
        &[("callbacks", r#"allowed_origins = ["http://rails.example"]"#)],
        "callbacks.allowed_origins",
        "set callbacks.allow_http = true",
    ),
    (
        &[("callbacks", r#"allowed_origins = ["ftp://rails.example"]"#)],
        "callbacks.allowed_origins",
        "scheme ftp is not http(s)",
    ),
    (
        &[("callbacks", r#"allowed_origins = ["rails"]"#)],
        "callbacks.allowed_origins",
        "\"rails\"",
    ),
    (
        &[("callbacks", "retry_schedule = []")],
        "callbacks.retry_schedule",
        "at least one delay",
    ),
    (
        &[("callbacks", r#"retry_schedule = ["soon"]"#)],
        "callbacks.retry_schedule",
        "",
    ),
    (
        &[("callbacks", r#"allowed_networks = ["10.0.0.0"]"#)],
        "callbacks.allowed_networks",
        "expected a CIDR",
    ),
    (
        &[("callbacks.standard_webhooks", "enabled = true")],
        "callbacks.standard_webhooks.secrets",
        "required when enabled",
    ),
    (
        &[(
            "callbacks.standard_webhooks",
            r#"secrets = ["whsec_a", "plain"]"#,
        )],
        "callbacks.standard_webhooks.secrets",
        "entry 1 does not start with whsec_",
    ),
    (
        &[("callbacks.jwt", "-secret")],
        "callbacks.jwt",
        "needs a secret (HS256) or a key",
    ),
    (
        &[(
            "callbacks.jwt",
            r#"keys = [{ kid = "a", algorithm = "ES256", private_key_file = "a.pem", signing = true }, { kid = "b", algorithm = "EdDSA", private_key_file = "b.pem", signing = true }]"#,
        )],
        "callbacks.jwt.keys",
        "only one key may have signing = true",
    ),
    (
        &[(
            "callbacks.jwt",
            r#"keys = [{ kid = "a", algorithm = "HS999", private_key_file = "a.pem" }]"#,
        )],
        "callbacks.jwt.keys[0].algorithm",
        "not one of RS256, ES256, EdDSA",
    ),
    (
        &[("jobs", r#"allowed_job_names = ["not a name"]"#)],
        "jobs.allowed_job_names",
        "not a name",
    ),
    (
        &[("jobs", "max_concurrent = 0")],
        "jobs.max_concurrent",
        "at least 1",
    ),
    (
        &[("jobs", "max_line_bytes = 100")],
        "jobs.max_line_bytes",
        "at least 256",
    ),
    (
        &[("jobs", "events_per_job = 5")],
        "jobs.events_per_job",
        "at least 10",
    ),
    (
        &[("jobs", r#"max_queue_age = "0s""#)],
        "jobs.max_queue_age",
        "more than 0s",
    ),
    (
        &[("sweeper", r#"interval = "0s""#)],
        "sweeper.interval",
        "more than 0s",
    ),
    (
        &[
            ("agents.\"not a name\"", r#"command = ["/bin/true"]"#),
            ("agents.\"not a name\"", r#"timeout = "1m""#),
        ],
        "agents.not a name",
        "agent name",
    ),
    (
        &[("agents.summarizer", "command = []")],
        "agents.summarizer.command",
        "must name a program",
    ),
    (
        &[(
            "agents.summarizer",
            "inline_artifacts_under_bytes = 2000000",
        )],
        "agents.summarizer.inline_artifacts_under_bytes",
        "at most 1048576",
    ),
    (
        &[("agents.summarizer", "max_concurrent = 0")],
        "agents.summarizer.max_concurrent",
        "at least 1",
    ),
    (
        &[("agents.summarizer", r#"timeout = "0s""#)],
        "agents.summarizer.timeout",
        "more than 0s",
    ),
    (
        &[("agents.summarizer", r#"stale_after = "0s""#)],
        "agents.summarizer.stale_after",
        "more than 0s",
    ),
    (
        &[("agents.summarizer", "max_attempts = 0")],
        "agents.summarizer.max_attempts",
        "at least 1",
    ),
    (
        &[("agents.summarizer.retry", "attempts = 0")],
        "agents.summarizer.retry.attempts",
        "at least 1",
    ),
    (
        &[("agents.summarizer.retry", "on_exit_codes = [75, 0]")],
        "agents.summarizer.retry.on_exit_codes",
        "0 is not an exit code",
    ),
    (
        &[
            ("agents.summarizer.retry", r#"delays = ["1s"]"#),
            ("agents.summarizer.retry", r#"base = "2s""#),
        ],
        "agents.summarizer.retry.delays",
        "not both",
    ),
    (
        &[("agents.summarizer.retry", "delays = []")],
        "agents.summarizer.retry.delays",
        "at least one",
    ),
    (
        &[("agents.summarizer.retry", r#"delays = ["8d"]"#)],
        "agents.summarizer.retry.delays",
        "at most 7 days",
    ),
    (
        &[("agents.summarizer.retry", r#"base = "0s""#)],
        "agents.summarizer.retry.base",
        "more than 0s",
    ),
    (
        &[("agents.summarizer.retry", r#"max = "30d""#)],
        "agents.summarizer.retry.max",
        "at most 7 days",
    ),
    (
        &[("agents.summarizer", r#"params_schema = "missing.json""#)],
        "agents.summarizer.params_schema",
        "missing.json",
    ),
    (
        &[("-agents.summarizer", "")],
        "agents",
        "at least one [agents.NAME] is required",
    ),
];

#[test]
fn every_validation_rule_refuses_with_its_key_and_reason() {
    for &(edits, key, reason) in RULES {
        let error = match load(edits) {
            Ok(_) => panic!("{edits:?} was accepted; expected a refusal naming {key}"),
            Err(e) => e,
        };
        let message = error.to_string();
        assert!(
            matches!(&error, ConfigError::Invalid { key: k, .. } if k == key),
            "{edits:?}: expected key {key}, got: {message}"
        );
        assert!(
            message.starts_with(&format!("config key `{key}`: ")) && message.contains(reason),
            "{edits:?}: expected {key} and {reason:?} in: {message}"
        );
    }
}

#[test]
fn a_refused_postgres_url_never_quotes_its_password() {
    let error = load(&[("store", r#"url = "postgres://u:hunter2@db:port/x""#)]).unwrap_err();

    assert!(!error.to_string().contains("hunter2"), "{error}");
}

#[test]
fn an_unknown_or_mistyped_key_is_refused_by_name() {
    for (edits, names) in [
        (&[("jobs", "max_concurent = 4")][..], "max_concurent"),
        (
            &[("jobs", r#"max_concurrent = "four""#)][..],
            "jobs.max_concurrent",
        ),
        (&[("server", "listen_on = 1")][..], "listen_on"),
        (&[("-store", "")][..], "store"),
    ] {
        let error = load(edits).unwrap_err();

        assert!(matches!(error, ConfigError::Parse(_)), "{edits:?}: {error}");
        assert!(error.to_string().contains(names), "{edits:?}: {error}");
    }
}
