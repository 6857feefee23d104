//! Configuration: one TOML file, every key also settable as `AGENT_SIDECAR__SECTION__KEY`.
//!
//! Two stages, as ripgrep does it: [`RawConfig`] holds exactly what the operator wrote (unknown
//! keys are an error that names them); [`Config`] holds parsed, cross-checked values. Relative
//! paths are resolved against the config file's folder. Everything fails at startup, never lazily.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use url::Url;

use crate::contract::{AgentName, JobName, schema};

/// Prefix of environment overrides: `AGENT_SIDECAR__JOBS__MAX_CONCURRENT=8`.
pub const ENV_PREFIX: &str = "AGENT_SIDECAR__";

/// Why a configuration was refused. Each message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or unreadable.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a value of the wrong type.
    #[error("{0}")]
    Parse(String),
    /// A value that parsed but makes no sense.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `callbacks.jwt.secret`.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A secret value: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

// ---- stage 1: what the operator wrote ----

/// The configuration file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    server: RawServer,
    storage: RawStorage,
    store: RawStore,
    callbacks: RawCallbacks,
    jobs: RawJobs,
    #[serde(default)]
    sweeper: RawSweeper,
    #[serde(default)]
    logging: LoggingConfig,
    #[serde(default)]
    agents: BTreeMap<String, RawAgent>,
}

/// `[logging]`: how the daemon logs (to stderr).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `text` for a terminal, `json` for one object per line (the journal, a log shipper).
    #[serde(default)]
    pub format: LogFormat,
    /// Default level filter (`RUST_LOG` overrides), e.g. `info` or `agent_sidecar=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default)]
    public_url: Option<String>,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: usize,
    #[serde(default = "default_write_timeout", with = "humantime_serde")]
    write_timeout: Duration,
    #[serde(default = "default_send_buffer_bytes")]
    send_buffer_bytes: usize,
    #[serde(default)]
    auth: Option<RawAuth>,
    #[serde(default)]
    tls: Option<RawServerTls>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            public_url: None,
            max_body_bytes: default_max_body_bytes(),
            write_timeout: default_write_timeout(),
            send_buffer_bytes: default_send_buffer_bytes(),
            auth: None,
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    issuer: String,
    audience: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_file: Option<PathBuf>,
    #[serde(default)]
    public_keys: Vec<PathBuf>,
    #[serde(default = "default_leeway", with = "humantime_serde")]
    leeway: Duration,
    #[serde(default = "default_public_paths")]
    public_paths: Vec<String>,
    #[serde(default = "default_scope_claim")]
    scope_claim: String,
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_public_paths() -> Vec<String> {
    ["/health", "/ready", "/metrics", "/openapi.json"]
        .map(String::from)
        .to_vec()
}
fn default_scope_claim() -> String {
    "agents".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    require_client_cert: bool,
}

fn default_write_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_send_buffer_bytes() -> usize {
    256 * 1024
}

fn default_listen() -> String {
    "127.0.0.1:8780".into()
}
fn default_max_body_bytes() -> usize {
    256 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    shared_root: PathBuf,
    #[serde(default)]
    output_uri_prefix: Option<String>,
    #[serde(default = "default_status_min_interval", with = "humantime_serde")]
    status_min_interval: Duration,
    #[serde(default)]
    folder_triggers: bool,
    #[serde(default = "default_rescan_interval", with = "humantime_serde")]
    rescan_interval: Duration,
    #[serde(default = "default_file_mode")]
    file_mode: RawMode,
    #[serde(default = "default_dir_mode")]
    dir_mode: RawMode,
}

/// An octal mode as written: `"0640"`, or a number whose digits are read as octal (figment
/// turns an unquoted `0640` in the environment into the number 640).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawMode {
    Text(String),
    Digits(u64),
}

impl RawMode {
    fn digits(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Digits(n) => n.to_string(),
        }
    }
}

fn default_file_mode() -> RawMode {
    RawMode::Text("0644".into())
}

fn default_dir_mode() -> RawMode {
    RawMode::Text("0755".into())
}

/// An octal permission mode such as "0640"; it must grant the owner (the sidecar) at least
/// `owner`, since the sidecar rewrites what it creates.
fn parse_mode(field: &str, raw: &RawMode, owner: u32) -> Result<u32, ConfigError> {
    let mode = u32::from_str_radix(&raw.digits(), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            invalid(
                field,
                "must be an octal mode between 0000 and 0777, e.g. \"0644\"",
            )
        })?;
    if mode & owner != owner {
        let detail = format!("must give its owner (the sidecar) at least {owner:04o}");
        return Err(invalid(field, detail));
    }
    Ok(mode)
}

fn default_rescan_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_status_min_interval() -> Duration {
    Duration::from_millis(250)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: String,
    node_id: Option<String>,
    #[serde(default = "default_lease", with = "humantime_serde")]
    lease: Duration,
    #[serde(default = "default_pool_size")]
    pool_size: usize,
}

fn default_lease() -> Duration {
    Duration::from_secs(30)
}

fn default_pool_size() -> usize {
    8
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallbacks {
    allowed_origins: Vec<String>,
    #[serde(default)]
    allow_http: bool,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_progress_interval", with = "humantime_serde")]
    progress_min_interval: Duration,
    #[serde(default = "default_progress_retries")]
    progress_retries: u32,
    #[serde(default = "default_schedule")]
    retry_schedule: Vec<String>,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    max_age: Duration,
    #[serde(default = "default_index_max")]
    output_index_max_bytes: usize,
    #[serde(default)]
    allowed_networks: Vec<String>,
    #[serde(default = "default_breaker_threshold")]
    breaker_threshold: u32,
    #[serde(default = "default_breaker_cooldown", with = "humantime_serde")]
    breaker_cooldown: Duration,
    #[serde(default = "default_per_destination")]
    per_destination_concurrency: usize,
    jwt: RawJwt,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    standard_webhooks: RawStandardWebhooks,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    client_cert_file: Option<PathBuf>,
    #[serde(default)]
    client_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStandardWebhooks {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    secrets: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    kid: String,
    algorithm: String,
    private_key_file: PathBuf,
    #[serde(default)]
    signing: bool,
}

fn default_breaker_threshold() -> u32 {
    5
}
fn default_breaker_cooldown() -> Duration {
    Duration::from_secs(30)
}
fn default_per_destination() -> usize {
    8
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_progress_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_progress_retries() -> u32 {
    2
}
fn default_schedule() -> Vec<String> {
    ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"]
        .map(String::from)
        .into()
}
fn default_max_age() -> Duration {
    Duration::from_secs(3 * 24 * 3600)
}
fn default_index_max() -> usize {
    64 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    issuer: String,
    audience: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_file: Option<PathBuf>,
    #[serde(default = "default_jwt_ttl", with = "humantime_serde")]
    ttl: Duration,
    #[serde(default)]
    keys: Vec<RawKey>,
}

fn default_jwt_ttl() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobs {
    allowed_job_names: Vec<String>,
    #[serde(default = "default_max_concurrent")]
    max_concurrent: usize,
    #[serde(default = "default_kill_grace", with = "humantime_serde")]
    kill_grace: Duration,
    #[serde(default = "default_max_line_bytes")]
    max_line_bytes: usize,
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    drain_timeout: Duration,
    #[serde(default, with = "humantime_serde")]
    max_queue_age: Option<Duration>,
    #[serde(default = "default_priority_aging", with = "humantime_serde")]
    priority_aging: Duration,
    #[serde(default = "default_events_per_job")]
    events_per_job: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSweeper {
    #[serde(default = "default_sweep_interval", with = "humantime_serde")]
    interval: Duration,
    #[serde(default = "default_retention", with = "humantime_serde")]
    retention: Duration,
    #[serde(default)]
    prune_folders: bool,
}

impl Default for RawSweeper {
    fn default() -> Self {
        Self {
            interval: default_sweep_interval(),
            retention: default_retention(),
            prune_folders: false,
        }
    }
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_priority_aging() -> Duration {
    Duration::from_secs(60)
}
fn default_events_per_job() -> usize {
    1000
}
fn default_sweep_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_max_attempts() -> u32 {
    3
}

fn default_max_concurrent() -> usize {
    4
}
fn default_kill_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_max_line_bytes() -> usize {
    16 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    command: Vec<String>,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    #[serde(default)]
    max_concurrent: Option<usize>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    params_schema: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    stale_after: Option<Duration>,
    #[serde(default)]
    on_restart: OnRestart,
    #[serde(default = "default_max_attempts")]
    max_attempts: u32,
}

// ---- stage 2: what the program uses ----

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[storage]`.
    pub storage: StorageConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[callbacks]`.
    pub callbacks: CallbacksConfig,
    /// `[jobs]`.
    pub jobs: JobsConfig,
    /// `[sweeper]`.
    pub sweeper: SweeperConfig,
    /// `[logging]`.
    pub logging: LoggingConfig,
    /// `[agents.NAME]`: the agent registry (replaced whole on reload).
    pub agents: Agents,
    /// The file this was loaded from (reloaded on SIGHUP).
    pub source: Option<PathBuf>,
}

/// `[server]`: the HTTP API.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Base URL used in `status_url`; defaults to `http://<listen>`.
    pub public_url: Option<Url>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// A connection whose client accepts no bytes for this long is closed (a watcher that
    /// stopped reading).
    pub write_timeout: Duration,
    /// Kernel send buffer of each connection: with one page of events, the most a watcher
    /// that stopped reading can hold.
    pub send_buffer_bytes: usize,
    /// `[server.auth]`: bearer tokens from Rails; absent means no token is asked for.
    pub auth: Option<AuthConfig>,
    /// `[server.tls]`: the listener serves HTTPS, optionally asking for client certificates.
    pub tls: Option<ServerTlsConfig>,
}

impl ServerConfig {
    /// Whether requests must prove who they are (a token or a client certificate).
    pub fn auth_required(&self) -> bool {
        self.auth.is_some()
            || self
                .tls
                .as_ref()
                .is_some_and(|t| t.client_ca_file.is_some())
    }
}

/// `[server.auth]`: how API callers are authenticated with a JWT (`Authorization: Bearer`).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// HS256 shared secret, if tokens are HMAC-signed.
    pub secret: Option<Secret>,
    /// PEM public keys (RSA, EC P-256 or Ed25519) whose tokens are accepted; reread on SIGHUP.
    pub public_keys: Vec<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf` (whole seconds).
    pub leeway: Duration,
    /// Paths answered without authentication (`/.well-known/jwks.json` always is).
    pub public_paths: Vec<String>,
    /// Claim listing the `agent_name`s a token may trigger; a token without it may trigger any.
    pub scope_claim: String,
}

/// `[server.tls]`: HTTPS on the listener, reloaded on SIGHUP.
#[derive(Debug, Clone)]
pub struct ServerTlsConfig {
    /// PEM certificate chain of the listener.
    pub cert_file: PathBuf,
    /// PEM private key of the listener.
    pub key_file: PathBuf,
    /// PEM CAs whose client certificates authenticate a caller.
    pub client_ca_file: Option<PathBuf>,
    /// Whether the handshake fails without a client certificate.
    pub require_client_cert: bool,
}

/// `[storage]`: the shared job folders.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Folder holding `<job_id>/input` and `<job_id>/output`.
    pub shared_root: PathBuf,
    /// Prefix of `output_uri` (`<prefix><job_id>/output/`); defaults to a `file://` URI.
    pub output_uri_prefix: Option<String>,
    /// Least time between two progress-driven rewrites of `output/status.json`.
    pub status_min_interval: Duration,
    /// Whether `<job_id>/input/trigger.json` files start jobs.
    pub folder_triggers: bool,
    /// How often job folders are rescanned for trigger files a watch event missed.
    pub rescan_interval: Duration,
    /// Modes of every file and folder the sidecar creates in a job folder (before the umask).
    pub modes: crate::jobdir::Modes,
}

/// `[store]`: where job state lives.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreBackend {
    /// An SQLite database file (`sqlite:///path/state.db`).
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by a fleet of sidecars (`postgres://...`).
    Postgres(PostgresUrl),
}

/// A PostgreSQL connection URL; its `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(pub String);

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match Url::parse(&self.0) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                write!(f, "{url}")
            }
            Ok(url) => write!(f, "{url}"),
            Err(_) => f.write_str("postgres://(unparsable)"),
        }
    }
}

/// `[store]`: where the durable state lives, and who this node is in a fleet.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The database.
    pub backend: StoreBackend,
    /// This node's name in the fleet (stable across restarts; default: the host name).
    pub node_id: String,
    /// How long a claimed job stays this node's without a heartbeat; after that, another node
    /// takes it over. Heartbeats come every third of it; the guardian kills the node's agents
    /// once five sixths of it pass without a renewal (`fence::deadline`).
    pub lease: Duration,
    /// Connections to PostgreSQL kept by this node.
    pub pool_size: usize,
}

/// `[callbacks]`: how Rails is called back.
#[derive(Debug, Clone)]
pub struct CallbacksConfig {
    /// Origins (`scheme://host:port`) callbacks may go to; nothing else is ever called.
    pub allowed_origins: BTreeSet<String>,
    /// Whether plain `http://` callback URLs are allowed (local development only).
    pub allow_http: bool,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Least time between two progress posts of one job (while its agent's output is open).
    pub progress_min_interval: Duration,
    /// Retries of one progress post before it is dropped (while its agent's output is open).
    pub progress_retries: u32,
    /// Delays between completion attempts; the last one repeats.
    pub retry_schedule: Vec<Duration>,
    /// Age after which an undelivered completion is dead-lettered.
    pub max_age: Duration,
    /// Largest `output_index` sent inline; a larger summary is replaced by a pointer.
    pub output_index_max_bytes: usize,
    /// Private, loopback and link-local networks a callback host may resolve to; any other
    /// such address is refused (DNS rebinding). Origins written as IP literals are allowed as
    /// written.
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// Consecutive failures to one origin that open its circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker holds deliveries to its origin.
    pub breaker_cooldown: Duration,
    /// Attempts in flight to one origin at once.
    pub per_destination_concurrency: usize,
    /// `[callbacks.jwt]`.
    pub jwt: JwtConfig,
    /// `[callbacks.tls]`.
    pub tls: TlsConfig,
    /// `[callbacks.standard_webhooks]`.
    pub standard_webhooks: StandardWebhooksConfig,
}

/// `[callbacks.jwt]`: signing of callbacks.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// `iss` claim.
    pub issuer: String,
    /// `aud` claim.
    pub audience: String,
    /// HS256 key; signs when no asymmetric key is marked `signing`.
    pub secret: Option<Secret>,
    /// Lifetime of each token (`exp - iat`).
    pub ttl: Duration,
    /// `[[callbacks.jwt.keys]]`: asymmetric keys, all published in the JWKS.
    pub keys: Vec<KeyConfig>,
}

/// Algorithms of asymmetric signing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// RSA PKCS#1 v1.5 with SHA-256.
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "RS256" => Ok(Self::Rs256),
            "ES256" => Ok(Self::Es256),
            "EdDSA" => Ok(Self::EdDsa),
            other => Err(format!("{other:?} is not one of RS256, ES256, EdDSA")),
        }
    }
}

/// One asymmetric key; its private key file is read when the transport is built (and reread
/// on reload), so rotating a key is replacing a file and sending SIGHUP.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    /// Key id (`kid`), published in the JWKS and set in each token's header.
    pub kid: String,
    /// Its algorithm.
    pub algorithm: KeyAlgorithm,
    /// PEM (PKCS#8, or PKCS#1 for RSA) private key.
    pub private_key_file: PathBuf,
    /// Whether this key signs; the others are only published.
    pub signing: bool,
}

/// `[callbacks.tls]`: the client side of mutual TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// PEM bundle of the CAs trusted for callback servers; the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) presented to Rails.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key_file: Option<PathBuf>,
}

/// `[callbacks.standard_webhooks]`: optional Standard Webhooks signature headers.
#[derive(Debug, Clone, Default)]
pub struct StandardWebhooksConfig {
    /// Whether `webhook-timestamp` and `webhook-signature` are sent.
    pub enabled: bool,
    /// `whsec_…` secrets; each signs (`v1,…`) so rotation is seamless.
    pub secrets: Vec<Secret>,
}

/// `[jobs]`: what may run and how much at once.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// `job_name`s Rails may ask for; anything else is refused at trigger time.
    pub allowed_job_names: BTreeSet<JobName>,
    /// Jobs running at once across all agents.
    pub max_concurrent: usize,
    /// Time between SIGTERM and SIGKILL when an agent is stopped.
    pub kill_grace: Duration,
    /// Longest stdout/stderr line kept; longer lines are cut.
    pub max_line_bytes: usize,
    /// On SIGTERM, how long running jobs may go on before they are stopped and left for the
    /// next start.
    pub drain_timeout: Duration,
    /// A job queued longer than this ends `timed_out` (`queue_timeout`); no limit when unset.
    pub max_queue_age: Option<Duration>,
    /// How much waiting one priority step is worth: a job starts as if it had been queued
    /// `rank x priority_aging` later, so a `low` job is only overtaken for a bounded time.
    pub priority_aging: Duration,
    /// Events (state changes and progress) kept per job for watchers' replay; the oldest
    /// progress events go first, state changes are always kept.
    pub events_per_job: usize,
}

/// `[sweeper]`: the background task that ends stuck jobs and prunes old ones.
#[derive(Debug, Clone)]
pub struct SweeperConfig {
    /// Time between two sweeps.
    pub interval: Duration,
    /// Terminal jobs (and their events and deliveries) older than this are deleted from the
    /// store, once their completion is no longer pending.
    pub retention: Duration,
    /// Whether pruning also deletes the job's folder under `shared_root`.
    pub prune_folders: bool,
}

/// What becomes of a job whose sidecar stopped while its agent ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRestart {
    /// Queue it again (up to `max_attempts` runs in all).
    #[default]
    Requeue,
    /// End it `failed` with reason `sidecar_restarted`.
    Fail,
}

/// The agent registry. Clones share it, so a reload that replaces it is seen everywhere; a
/// run keeps the `Arc<AgentConfig>` it started with.
#[derive(Debug, Clone)]
pub struct Agents(Arc<std::sync::RwLock<Arc<Registry>>>);

/// The agents by name.
pub type Registry = BTreeMap<AgentName, Arc<AgentConfig>>;

impl Agents {
    fn new(agents: Registry) -> Self {
        Self(Arc::new(std::sync::RwLock::new(Arc::new(agents))))
    }

    /// The registry as it is now.
    pub fn snapshot(&self) -> Arc<Registry> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// One agent, as defined now.
    pub fn get(&self, name: &AgentName) -> Option<Arc<AgentConfig>> {
        self.snapshot().get(name).cloned()
    }

    /// Whether the registry is empty.
    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    /// Replaces the registry with `other`'s.
    pub fn replace_with(&self, other: &Agents) {
        let fresh = other.snapshot();
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }
}

/// `[agents.NAME]`: one agent of the registry.
#[derive(Clone)]
pub struct AgentConfig {
    /// argv; entries starting with `./` or `../` are relative to the config file's folder.
    pub command: Vec<String>,
    /// Wall-clock limit of one run.
    pub timeout: Duration,
    /// Runs of this agent at once.
    pub max_concurrent: usize,
    /// Extra environment for the agent.
    pub env: BTreeMap<String, String>,
    /// Schema `params` must satisfy, if any.
    pub params_schema: Option<Arc<jsonschema::Validator>>,
    /// A run silent (no stdout or stderr line) for longer than this is stopped, `timed_out`.
    pub stale_after: Option<Duration>,
    /// What a restart does with a run the previous process left behind.
    pub on_restart: OnRestart,
    /// Runs of one job at most (requeues after restarts included).
    pub max_attempts: u32,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `env` may hold credentials for the agent: list the names only.
        f.debug_struct("AgentConfig")
            .field("command", &self.command)
            .field("timeout", &self.timeout)
            .field("max_concurrent", &self.max_concurrent)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("params_schema", &self.params_schema.is_some())
            .field("stale_after", &self.stale_after)
            .field("on_restart", &self.on_restart)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl Config {
    /// Loads `path`, applies `AGENT_SIDECAR__*` overrides from the environment, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        // figment treats a missing file as empty; a typo in the path must be loud.
        std::fs::metadata(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw: RawConfig = Figment::new()
            .merge(Toml::file(path))
            .merge(Env::prefixed(ENV_PREFIX).split("__"))
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(e)))?;
        // Absolute, so relative paths in the file mean the same from any working directory
        // (agents run with the job folder as theirs).
        let absolute = path.canonicalize().map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = absolute
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("/"));
        let mut config = Self::resolve(raw, &base)?;
        // Reloads read the path as given, not where it pointed at start: a ConfigMap swaps
        // the `..data` link under it and removes the old target.
        config.source = Some(std::path::absolute(path).unwrap_or(absolute));
        Ok(config)
    }

    /// Turns what was written into what is used, resolving paths against `base`.
    pub fn resolve(raw: RawConfig, base: &Path) -> Result<Self, ConfigError> {
        let jobs = resolve_jobs(raw.jobs)?;
        if raw.storage.rescan_interval.is_zero() {
            return Err(invalid("storage.rescan_interval", "must be more than 0s"));
        }
        if raw.storage.status_min_interval.is_zero() {
            return Err(invalid(
                "storage.status_min_interval",
                "must be more than 0s",
            ));
        }
        let agents = raw
            .agents
            .into_iter()
            .map(|(name, agent)| resolve_agent(name, agent, base, jobs.max_concurrent))
            .collect::<Result<_, _>>()?;
        let cfg = Config {
            server: resolve_server(raw.server, base)?,
            storage: StorageConfig {
                shared_root: base.join(raw.storage.shared_root),
                output_uri_prefix: raw.storage.output_uri_prefix,
                status_min_interval: raw.storage.status_min_interval,
                folder_triggers: raw.storage.folder_triggers,
                rescan_interval: raw.storage.rescan_interval,
                modes: crate::jobdir::Modes {
                    file: parse_mode("storage.file_mode", &raw.storage.file_mode, 0o600)?,
                    dir: parse_mode("storage.dir_mode", &raw.storage.dir_mode, 0o700)?,
                },
            },
            store: resolve_store(raw.store, base)?,
            callbacks: resolve_callbacks(raw.callbacks, base)?,
            jobs,
            sweeper: resolve_sweeper(raw.sweeper)?,
            logging: raw.logging,
            agents: Agents::new(agents),
            source: None,
        };
        if cfg.agents.is_empty() {
            return Err(invalid("agents", "at least one [agents.NAME] is required"));
        }
        Ok(cfg)
    }

    /// The base of `status_url`s.
    pub fn public_url(&self, bound: SocketAddr) -> String {
        match &self.server.public_url {
            Some(url) => url.as_str().trim_end_matches('/').to_owned(),
            None if self.server.tls.is_some() => format!("https://{bound}"),
            None => format!("http://{bound}"),
        }
    }
}

fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|err| {
            let key = err.path.join(".");
            let source = match &err.metadata {
                Some(md) => format!(" ({})", md.name),
                None => String::new(),
            };
            if key.is_empty() {
                format!("config: {}{source}", err.kind)
            } else {
                format!("config key `{key}`: {}{source}", err.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn resolve_server(raw: RawServer, base: &Path) -> Result<ServerConfig, ConfigError> {
    let listen = raw
        .listen
        .parse()
        .map_err(|e| invalid("server.listen", format!("{e} (expected host:port)")))?;
    let public_url = raw
        .public_url
        .map(|u| Url::parse(&u).map_err(|e| invalid("server.public_url", e.to_string())))
        .transpose()?;
    if raw.write_timeout.is_zero() {
        return Err(invalid("server.write_timeout", "must be more than 0s"));
    }
    if raw.send_buffer_bytes < 4096 {
        return Err(invalid("server.send_buffer_bytes", "must be at least 4096"));
    }
    let tls = raw.tls.map(|t| resolve_server_tls(t, base)).transpose()?;
    Ok(ServerConfig {
        listen,
        public_url,
        max_body_bytes: raw.max_body_bytes,
        write_timeout: raw.write_timeout,
        send_buffer_bytes: raw.send_buffer_bytes,
        auth: raw.auth.map(|a| resolve_auth(a, base)).transpose()?,
        tls,
    })
}

fn resolve_server_tls(raw: RawServerTls, base: &Path) -> Result<ServerTlsConfig, ConfigError> {
    if raw.require_client_cert && raw.client_ca_file.is_none() {
        return Err(invalid(
            "server.tls.require_client_cert",
            "needs server.tls.client_ca_file to check client certificates against",
        ));
    }
    Ok(ServerTlsConfig {
        cert_file: base.join(raw.cert_file),
        key_file: base.join(raw.key_file),
        client_ca_file: raw.client_ca_file.map(|p| base.join(p)),
        require_client_cert: raw.require_client_cert,
    })
}

/// An HS256 secret written inline or in `secret_file` (one of them, 32 bytes or more).
fn hs256_secret(
    section: &str,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    base: &Path,
) -> Result<Option<String>, ConfigError> {
    let secret = match (secret, secret_file) {
        (Some(s), None) => Some(s),
        (None, Some(file)) => {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                invalid(
                    format!("{section}.secret_file"),
                    format!("{}: {e}", path.display()),
                )
            })?;
            Some(text.trim_end_matches(['\r', '\n']).to_owned())
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                section.to_owned(),
                "set either secret or secret_file, not both",
            ));
        }
        (None, None) => None,
    };
    if secret.as_ref().is_some_and(|s| s.len() < 32) {
        return Err(invalid(
            format!("{section}.secret"),
            "must be at least 32 bytes for HS256",
        ));
    }
    Ok(secret)
}

fn resolve_auth(raw: RawAuth, base: &Path) -> Result<AuthConfig, ConfigError> {
    let secret = hs256_secret("server.auth", raw.secret, raw.secret_file, base)?;
    if secret.is_none() && raw.public_keys.is_empty() {
        return Err(invalid(
            "server.auth",
            "needs a secret (HS256) or public_keys (RS256, ES256, EdDSA)",
        ));
    }
    Ok(AuthConfig {
        issuer: raw.issuer,
        audience: raw.audience,
        secret: secret.map(Secret::new),
        public_keys: raw.public_keys.into_iter().map(|p| base.join(p)).collect(),
        leeway: raw.leeway,
        public_paths: raw.public_paths,
        scope_claim: raw.scope_claim,
    })
}

fn resolve_store(raw: RawStore, base: &Path) -> Result<StoreConfig, ConfigError> {
    let backend = resolve_backend(&raw.url, base)?;
    if raw.lease < Duration::from_secs(1) {
        return Err(invalid("store.lease", "must be at least 1s"));
    }
    if raw.pool_size == 0 {
        return Err(invalid("store.pool_size", "must be at least 1"));
    }
    let node_id = match raw.node_id {
        Some(id) => id,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default(),
    };
    if node_id.is_empty() || node_id.len() > 200 || node_id.chars().any(char::is_control) {
        return Err(invalid(
            "store.node_id",
            "must be 1 to 200 printable characters (default: the host name)",
        ));
    }
    Ok(StoreConfig {
        backend,
        node_id,
        lease: raw.lease,
        pool_size: raw.pool_size,
    })
}

fn resolve_backend(url: &str, base: &Path) -> Result<StoreBackend, ConfigError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return match url.parse::<tokio_postgres::Config>() {
            Ok(_) => Ok(StoreBackend::Postgres(PostgresUrl(url.to_owned()))),
            // The parser's message can quote the URL, password included: say only what it is.
            Err(_) => Err(invalid("store.url", "is not a valid PostgreSQL URL")),
        };
    }
    let path = url.strip_prefix("sqlite://").ok_or_else(|| {
        invalid(
            "store.url",
            "must start with sqlite:// (e.g. sqlite:///var/lib/agent-sidecar/state.db) or postgres://",
        )
    })?;
    if path.is_empty() {
        return Err(invalid("store.url", "names no database file"));
    }
    Ok(StoreBackend::Sqlite(base.join(path)))
}

fn resolve_callbacks(raw: RawCallbacks, base: &Path) -> Result<CallbacksConfig, ConfigError> {
    let mut allowed_origins = BTreeSet::new();
    for origin in &raw.allowed_origins {
        let url = Url::parse(origin)
            .map_err(|e| invalid("callbacks.allowed_origins", format!("{origin:?}: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if raw.allow_http => {}
            "http" => {
                return Err(invalid(
                    "callbacks.allowed_origins",
                    format!(
                        "{origin:?} is plain http; set callbacks.allow_http = true to allow it (local development only)"
                    ),
                ));
            }
            other => {
                return Err(invalid(
                    "callbacks.allowed_origins",
                    format!("{origin:?}: scheme {other} is not http(s)"),
                ));
            }
        }
        allowed_origins.insert(url.origin().ascii_serialization());
    }
    let retry_schedule = raw
        .retry_schedule
        .iter()
        .map(|d| humantime::parse_duration(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("callbacks.retry_schedule", e.to_string()))?;
    if retry_schedule.is_empty() {
        return Err(invalid(
            "callbacks.retry_schedule",
            "needs at least one delay",
        ));
    }
    Ok(CallbacksConfig {
        allowed_origins,
        allow_http: raw.allow_http,
        timeout: raw.timeout,
        progress_min_interval: raw.progress_min_interval,
        progress_retries: raw.progress_retries,
        retry_schedule,
        max_age: raw.max_age,
        output_index_max_bytes: raw.output_index_max_bytes,
        allowed_networks: raw
            .allowed_networks
            .iter()
            .map(|n| {
                n.parse().map_err(|e| {
                    invalid(
                        "callbacks.allowed_networks",
                        format!("{n:?}: {e} (expected a CIDR such as 10.0.0.0/8)"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        breaker_threshold: raw.breaker_threshold.max(1),
        breaker_cooldown: raw.breaker_cooldown,
        per_destination_concurrency: raw.per_destination_concurrency.max(1),
        jwt: resolve_jwt(raw.jwt, base)?,
        tls: TlsConfig {
            ca_file: raw.tls.ca_file.map(|p| base.join(p)),
            client_cert_file: raw.tls.client_cert_file.map(|p| base.join(p)),
            client_key_file: raw.tls.client_key_file.map(|p| base.join(p)),
        },
        standard_webhooks: resolve_standard_webhooks(raw.standard_webhooks)?,
    })
}

fn resolve_standard_webhooks(
    raw: RawStandardWebhooks,
) -> Result<StandardWebhooksConfig, ConfigError> {
    if raw.enabled && raw.secrets.is_empty() {
        return Err(invalid(
            "callbacks.standard_webhooks.secrets",
            "at least one whsec_ secret is required when enabled",
        ));
    }
    if let Some(bad) = raw.secrets.iter().position(|s| !s.starts_with("whsec_")) {
        return Err(invalid(
            "callbacks.standard_webhooks.secrets",
            format!("entry {bad} does not start with whsec_"),
        ));
    }
    Ok(StandardWebhooksConfig {
        enabled: raw.enabled,
        secrets: raw.secrets.into_iter().map(Secret::new).collect(),
    })
}

fn resolve_jwt(raw: RawJwt, base: &Path) -> Result<JwtConfig, ConfigError> {
    let secret = hs256_secret("callbacks.jwt", raw.secret, raw.secret_file, base)?;
    let keys: Vec<KeyConfig> = raw
        .keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            Ok(KeyConfig {
                algorithm: k
                    .algorithm
                    .parse()
                    .map_err(|e| invalid(format!("callbacks.jwt.keys[{i}].algorithm"), e))?,
                kid: k.kid,
                private_key_file: base.join(k.private_key_file),
                signing: k.signing,
            })
        })
        .collect::<Result<_, ConfigError>>()?;
    match keys.iter().filter(|k| k.signing).count() {
        0 if secret.is_none() => {
            return Err(invalid(
                "callbacks.jwt",
                "needs a secret (HS256) or a key with signing = true",
            ));
        }
        0 | 1 => {}
        _ => {
            return Err(invalid(
                "callbacks.jwt.keys",
                "only one key may have signing = true",
            ));
        }
    }
    Ok(JwtConfig {
        issuer: raw.issuer,
        audience: raw.audience,
        secret: secret.map(Secret::new),
        ttl: raw.ttl,
        keys,
    })
}

fn resolve_jobs(raw: RawJobs) -> Result<JobsConfig, ConfigError> {
    let allowed_job_names = raw
        .allowed_job_names
        .iter()
        .map(|n| {
            n.parse()
                .map_err(|e| invalid("jobs.allowed_job_names", format!("{n:?} {e}")))
        })
        .collect::<Result<_, _>>()?;
    if raw.max_concurrent == 0 {
        return Err(invalid("jobs.max_concurrent", "must be at least 1"));
    }
    if raw.max_line_bytes < 256 {
        return Err(invalid("jobs.max_line_bytes", "must be at least 256"));
    }
    if raw.events_per_job < 10 {
        return Err(invalid("jobs.events_per_job", "must be at least 10"));
    }
    if raw.max_queue_age.is_some_and(|d| d.is_zero()) {
        return Err(invalid("jobs.max_queue_age", "must be more than 0s"));
    }
    Ok(JobsConfig {
        allowed_job_names,
        max_concurrent: raw.max_concurrent,
        kill_grace: raw.kill_grace,
        max_line_bytes: raw.max_line_bytes,
        drain_timeout: raw.drain_timeout,
        max_queue_age: raw.max_queue_age,
        priority_aging: raw.priority_aging,
        events_per_job: raw.events_per_job,
    })
}

fn resolve_sweeper(raw: RawSweeper) -> Result<SweeperConfig, ConfigError> {
    if raw.interval.is_zero() {
        return Err(invalid("sweeper.interval", "must be more than 0s"));
    }
    Ok(SweeperConfig {
        interval: raw.interval,
        retention: raw.retention,
        prune_folders: raw.prune_folders,
    })
}

fn resolve_agent(
    name: String,
    raw: RawAgent,
    base: &Path,
    global_max: usize,
) -> Result<(AgentName, Arc<AgentConfig>), ConfigError> {
    let key = |field: &str| format!("agents.{name}.{field}");
    let agent_name: AgentName = name
        .parse()
        .map_err(|e| invalid(format!("agents.{name}"), format!("agent name {e}")))?;
    if raw.command.is_empty() {
        return Err(invalid(key("command"), "must name a program"));
    }
    let command = raw
        .command
        .into_iter()
        .map(|arg| {
            if arg.starts_with("./") || arg.starts_with("../") {
                base.join(&arg).to_string_lossy().into_owned()
            } else {
                arg
            }
        })
        .collect();
    let params_schema = raw
        .params_schema
        .map(|file| {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid(key("params_schema"), format!("{}: {e}", path.display())))?;
            schema::compile(&text)
                .map(Arc::new)
                .map_err(|e| invalid(key("params_schema"), format!("{}: {e}", path.display())))
        })
        .transpose()?;
    let max_concurrent = raw.max_concurrent.unwrap_or(global_max);
    if max_concurrent == 0 {
        return Err(invalid(key("max_concurrent"), "must be at least 1"));
    }
    if raw.timeout.is_zero() {
        return Err(invalid(key("timeout"), "must be more than 0s"));
    }
    if raw.stale_after.is_some_and(|d| d.is_zero()) {
        return Err(invalid(key("stale_after"), "must be more than 0s"));
    }
    if raw.max_attempts == 0 {
        return Err(invalid(key("max_attempts"), "must be at least 1"));
    }
    let agent = AgentConfig {
        command,
        timeout: raw.timeout,
        max_concurrent,
        env: raw.env,
        params_schema,
        stale_after: raw.stale_after,
        on_restart: raw.on_restart,
        max_attempts: raw.max_attempts,
    };
    Ok((agent_name, Arc::new(agent)))
}
