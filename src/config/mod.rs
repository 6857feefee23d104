//! Configuration: one TOML file, every key also settable as `AGENT_SIDECAR__SECTION__KEY`.
//!
//! Two stages, as ripgrep does it: [`RawConfig`] (`file`) holds exactly what the operator wrote
//! (unknown keys are an error that names them) and every default; `validate` turns it into
//! [`Config`] (this module), parsed and cross-checked values, the types the rest of the crate
//! uses. Relative paths are resolved against the config file's folder. Everything fails at
//! startup, never lazily.

mod file;
mod validate;

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

use crate::contract::{AgentName, JobName};

pub use file::RawConfig;

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

/// `[logging]`: how the daemon logs (to stderr).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `text` for a terminal, `json` for one object per line (the journal, a log shipper).
    pub format: LogFormat,
    /// Default level filter (`RUST_LOG` overrides), e.g. `info` or `agent_sidecar=debug`.
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: "info".into(),
        }
    }
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
    /// The largest input file a v2 manifest may declare; a larger one is refused (422 naming
    /// the input) before any byte of it is read. `None`: no limit.
    pub max_input_bytes: Option<u64>,
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
    /// Runs of this agent with one concurrency key at once, on every node; `None` for no
    /// limit (issue 21).
    pub max_per_key: Option<u32>,
    /// Extra environment for the agent.
    pub env: BTreeMap<String, String>,
    /// Schema `params` must satisfy, if any.
    pub params_schema: Option<Arc<jsonschema::Validator>>,
    /// A run silent (no stdout or stderr line) for longer than this is stopped, `timed_out`.
    pub stale_after: Option<Duration>,
    /// What a restart does with a run the previous process left behind.
    pub on_restart: OnRestart,
    /// The restart budget: a job interrupted by a sidecar restart is requeued while its
    /// attempt number is below this (every claim counts, a retry's too).
    pub max_attempts: u32,
    /// `[agents.NAME.retry]`: which failed runs are tried again, how often, after how long.
    pub retry: crate::retry::RetryPolicy,
    /// Which artifacts a completion carries inline.
    pub inline_artifacts: InlineArtifacts,
}

/// Which artifacts a completion carries inline (base64 next to their SHA-256 in
/// `output_index`): those smaller than `under_bytes`, when `always` or when the agent's
/// `summary.json` says `"inline_artifacts": true`, as many as `output_index_max_bytes` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InlineArtifacts {
    /// `[agents.X] inline_artifacts`: inline without the agent asking.
    pub always: bool,
    /// `[agents.X] inline_artifacts_under_bytes` (0: never inline).
    pub under_bytes: u64,
}

impl Default for InlineArtifacts {
    fn default() -> Self {
        Self {
            always: false,
            under_bytes: 64 * 1024,
        }
    }
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `env` may hold credentials for the agent: list the names only.
        f.debug_struct("AgentConfig")
            .field("command", &self.command)
            .field("timeout", &self.timeout)
            .field("max_concurrent", &self.max_concurrent)
            .field("max_per_key", &self.max_per_key)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("params_schema", &self.params_schema.is_some())
            .field("stale_after", &self.stale_after)
            .field("on_restart", &self.on_restart)
            .field("max_attempts", &self.max_attempts)
            .field("retry", &self.retry)
            .field("inline_artifacts", &self.inline_artifacts)
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

#[cfg(test)]
mod tests;
