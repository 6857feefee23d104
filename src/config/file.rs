//! Stage 1: the configuration file as written (TOML, then `AGENT_SIDECAR__*` overrides), read
//! by figment into serde structs. Nothing is checked here but types and key names: unknown keys
//! are refused (`deny_unknown_fields`), and every default is written down once.
//!
//! How defaults are spelled: a section whose every key has a default is `#[serde(default)]`,
//! its `Default` impl listing the values; in a section with a required key (which must stay
//! required), each optional key names its default at the field, numbers through the generic
//! [`secs`], [`millis`], [`size`] and [`number`], so the value is read where the key is.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{LoggingConfig, OnRestart};

/// `N` seconds.
const fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

/// `N` milliseconds.
const fn millis<const N: u64>() -> Duration {
    Duration::from_millis(N)
}

/// `N` (bytes, connections, jobs, events).
const fn size<const N: usize>() -> usize {
    N
}

/// `N` (retries, attempts, failures).
const fn number<const N: u32>() -> u32 {
    N
}

const KIB: usize = 1024;
const DAY: u64 = 24 * 3600;

/// The configuration file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    pub(super) storage: RawStorage,
    pub(super) store: RawStore,
    pub(super) callbacks: RawCallbacks,
    pub(super) jobs: RawJobs,
    #[serde(default)]
    pub(super) sweeper: RawSweeper,
    #[serde(default)]
    pub(super) logging: LoggingConfig,
    #[serde(default)]
    pub(super) agents: BTreeMap<String, RawAgent>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub(super) listen: String,
    pub(super) public_url: Option<String>,
    pub(super) max_body_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub(super) write_timeout: Duration,
    pub(super) send_buffer_bytes: usize,
    pub(super) max_input_bytes: Option<u64>,
    pub(super) auth: Option<RawAuth>,
    pub(super) tls: Option<RawServerTls>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8780".into(),
            public_url: None,
            max_body_bytes: 256 * KIB,
            write_timeout: secs::<30>(),
            send_buffer_bytes: 256 * KIB,
            max_input_bytes: None,
            auth: None,
            tls: None,
        }
    }
}

/// `[server.auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(super) issuer: String,
    pub(super) audience: String,
    #[serde(default)]
    pub(super) secret: Option<String>,
    #[serde(default)]
    pub(super) secret_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) public_keys: Vec<PathBuf>,
    #[serde(default = "secs::<30>", with = "humantime_serde")]
    pub(super) leeway: Duration,
    #[serde(default = "default_public_paths")]
    pub(super) public_paths: Vec<String>,
    #[serde(default = "default_scope_claim")]
    pub(super) scope_claim: String,
}

fn default_public_paths() -> Vec<String> {
    ["/health", "/ready", "/metrics", "/openapi.json"]
        .map(String::from)
        .to_vec()
}

fn default_scope_claim() -> String {
    "agents".into()
}

/// `[server.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServerTls {
    pub(super) cert_file: PathBuf,
    pub(super) key_file: PathBuf,
    #[serde(default)]
    pub(super) client_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) require_client_cert: bool,
}

/// `[storage]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub(super) shared_root: PathBuf,
    #[serde(default)]
    pub(super) output_uri_prefix: Option<String>,
    #[serde(default = "millis::<250>", with = "humantime_serde")]
    pub(super) status_min_interval: Duration,
    #[serde(default)]
    pub(super) folder_triggers: bool,
    #[serde(default = "secs::<30>", with = "humantime_serde")]
    pub(super) rescan_interval: Duration,
    #[serde(default = "RawMode::file")]
    pub(super) file_mode: RawMode,
    #[serde(default = "RawMode::dir")]
    pub(super) dir_mode: RawMode,
}

/// An octal mode as written: `"0640"`, or a number whose digits are read as octal (figment
/// turns an unquoted `0640` in the environment into the number 640).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawMode {
    Text(String),
    Digits(u64),
}

impl RawMode {
    fn file() -> Self {
        Self::Text("0644".into())
    }

    fn dir() -> Self {
        Self::Text("0755".into())
    }

    /// The digits as written.
    pub(super) fn digits(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Digits(n) => n.to_string(),
        }
    }
}

/// `[store]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) url: String,
    pub(super) node_id: Option<String>,
    #[serde(default = "secs::<30>", with = "humantime_serde")]
    pub(super) lease: Duration,
    #[serde(default = "size::<8>")]
    pub(super) pool_size: usize,
}

/// `[callbacks]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCallbacks {
    pub(super) allowed_origins: Vec<String>,
    #[serde(default)]
    pub(super) allow_http: bool,
    #[serde(default = "secs::<30>", with = "humantime_serde")]
    pub(super) timeout: Duration,
    #[serde(default = "millis::<100>", with = "humantime_serde")]
    pub(super) progress_min_interval: Duration,
    #[serde(default = "number::<2>")]
    pub(super) progress_retries: u32,
    #[serde(default = "default_retry_schedule")]
    pub(super) retry_schedule: Vec<String>,
    #[serde(default = "secs::<{ 3 * DAY }>", with = "humantime_serde")]
    pub(super) max_age: Duration,
    #[serde(default = "size::<{ 64 * KIB }>")]
    pub(super) output_index_max_bytes: usize,
    #[serde(default)]
    pub(super) allowed_networks: Vec<String>,
    #[serde(default = "number::<5>")]
    pub(super) breaker_threshold: u32,
    #[serde(default = "secs::<30>", with = "humantime_serde")]
    pub(super) breaker_cooldown: Duration,
    #[serde(default = "size::<8>")]
    pub(super) per_destination_concurrency: usize,
    pub(super) jwt: RawJwt,
    #[serde(default)]
    pub(super) tls: RawTls,
    #[serde(default)]
    pub(super) standard_webhooks: RawStandardWebhooks,
}

fn default_retry_schedule() -> Vec<String> {
    ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"]
        .map(String::from)
        .into()
}

/// `[callbacks.tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTls {
    pub(super) ca_file: Option<PathBuf>,
    pub(super) client_cert_file: Option<PathBuf>,
    pub(super) client_key_file: Option<PathBuf>,
}

/// `[callbacks.standard_webhooks]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStandardWebhooks {
    pub(super) enabled: bool,
    pub(super) secrets: Vec<String>,
}

/// `[callbacks.jwt]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwt {
    pub(super) issuer: String,
    pub(super) audience: String,
    #[serde(default)]
    pub(super) secret: Option<String>,
    #[serde(default)]
    pub(super) secret_file: Option<PathBuf>,
    #[serde(default = "secs::<300>", with = "humantime_serde")]
    pub(super) ttl: Duration,
    #[serde(default)]
    pub(super) keys: Vec<RawKey>,
}

/// `[[callbacks.jwt.keys]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    pub(super) kid: String,
    pub(super) algorithm: String,
    pub(super) private_key_file: PathBuf,
    #[serde(default)]
    pub(super) signing: bool,
}

/// `[jobs]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJobs {
    pub(super) allowed_job_names: Vec<String>,
    #[serde(default = "size::<4>")]
    pub(super) max_concurrent: usize,
    #[serde(default = "secs::<10>", with = "humantime_serde")]
    pub(super) kill_grace: Duration,
    #[serde(default = "size::<{ 16 * KIB }>")]
    pub(super) max_line_bytes: usize,
    #[serde(default = "secs::<30>", with = "humantime_serde")]
    pub(super) drain_timeout: Duration,
    #[serde(default, with = "humantime_serde")]
    pub(super) max_queue_age: Option<Duration>,
    #[serde(default = "secs::<60>", with = "humantime_serde")]
    pub(super) priority_aging: Duration,
    #[serde(default = "size::<1000>")]
    pub(super) events_per_job: usize,
}

/// `[sweeper]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSweeper {
    #[serde(with = "humantime_serde")]
    pub(super) interval: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) retention: Duration,
    pub(super) prune_folders: bool,
}

impl Default for RawSweeper {
    fn default() -> Self {
        Self {
            interval: secs::<5>(),
            retention: secs::<{ 7 * DAY }>(),
            prune_folders: false,
        }
    }
}

/// `[agents.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) command: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub(super) timeout: Duration,
    #[serde(default)]
    pub(super) max_concurrent: Option<usize>,
    #[serde(default)]
    pub(super) max_per_key: Option<u32>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) params_schema: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub(super) stale_after: Option<Duration>,
    #[serde(default)]
    pub(super) on_restart: OnRestart,
    #[serde(default = "number::<3>")]
    pub(super) max_attempts: u32,
    #[serde(default)]
    pub(super) inline_artifacts: bool,
    #[serde(default = "size::<{ 64 * KIB }>")]
    pub(super) inline_artifacts_under_bytes: usize,
    #[serde(default)]
    pub(super) retry: RawRetry,
}

/// `[agents.NAME.retry]`: nothing retried unless `attempts` is above 1.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRetry {
    pub(super) attempts: u32,
    pub(super) on_exit_codes: Vec<i32>,
    pub(super) on_timeout: bool,
    pub(super) on_stale: bool,
    pub(super) on_request: bool,
    #[serde(with = "humantime_serde")]
    pub(super) base: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub(super) max: Option<Duration>,
    pub(super) jitter: crate::retry::Jitter,
    pub(super) delays: Option<Vec<humantime_serde::Serde<Duration>>>,
}

impl Default for RawRetry {
    fn default() -> Self {
        Self {
            attempts: 1,
            on_exit_codes: Vec::new(),
            on_timeout: false,
            on_stale: false,
            on_request: true,
            base: None,
            max: None,
            jitter: crate::retry::Jitter::Full,
            delays: None,
        }
    }
}
