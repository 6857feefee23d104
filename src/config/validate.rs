//! Stage 2: the rules that turn what was written ([`RawConfig`]) into what the program uses
//! ([`Config`]): values parsed (addresses, URLs, durations, modes, CIDRs, names), paths
//! resolved against the config file's folder, ranges and cross-field checks. Every refusal is
//! a [`ConfigError::Invalid`] naming its dotted key.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::file::*;
use super::*;
use crate::contract::{AgentName, schema};

impl Config {
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
    if raw.max_input_bytes == Some(0) {
        return Err(invalid("server.max_input_bytes", "must be more than 0"));
    }
    let tls = raw.tls.map(|t| resolve_server_tls(t, base)).transpose()?;
    Ok(ServerConfig {
        listen,
        public_url,
        max_body_bytes: raw.max_body_bytes,
        write_timeout: raw.write_timeout,
        send_buffer_bytes: raw.send_buffer_bytes,
        max_input_bytes: raw.max_input_bytes,
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

/// The largest `inline_artifacts_under_bytes`.
const INLINE_MAX: usize = 1 << 20;

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
    if raw.max_per_key == Some(0) {
        return Err(invalid(key("max_per_key"), "must be at least 1"));
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
    let retry = resolve_retry(raw.retry, &|field| key(&format!("retry.{field}")))?;
    // Inline bytes ride in every delivery attempt of the completion; larger files have a URL.
    if raw.inline_artifacts_under_bytes > INLINE_MAX {
        return Err(invalid(
            key("inline_artifacts_under_bytes"),
            format!("must be at most {INLINE_MAX} (larger artifacts are fetched by their url)"),
        ));
    }
    let agent = AgentConfig {
        command,
        timeout: raw.timeout,
        max_concurrent,
        max_per_key: raw.max_per_key,
        env: raw.env,
        params_schema,
        stale_after: raw.stale_after,
        on_restart: raw.on_restart,
        max_attempts: raw.max_attempts,
        retry,
        inline_artifacts: InlineArtifacts {
            always: raw.inline_artifacts,
            under_bytes: raw.inline_artifacts_under_bytes as u64,
        },
    };
    Ok((agent_name, Arc::new(agent)))
}

/// Longest backoff delay a retry policy may name: a job waiting longer is better triggered
/// again by Rails.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// `[agents.NAME.retry]`: `delays` (a list) or `base`/`max` (exponential), never both.
fn resolve_retry(
    raw: RawRetry,
    key: &dyn Fn(&str) -> String,
) -> Result<crate::retry::RetryPolicy, ConfigError> {
    use crate::retry::{Backoff, RetryPolicy};
    if raw.attempts == 0 {
        return Err(invalid(key("attempts"), "must be at least 1"));
    }
    if let Some(code) = raw.on_exit_codes.iter().find(|c| !(1..=255).contains(*c)) {
        return Err(invalid(
            key("on_exit_codes"),
            format!("{code} is not an exit code of a failed run (1 to 255)"),
        ));
    }
    let too_long = |d: &Duration| *d > MAX_RETRY_DELAY;
    let delays: Option<Vec<Duration>> = raw
        .delays
        .map(|ds| ds.into_iter().map(|d| d.into_inner()).collect());
    let backoff = match delays {
        Some(_) if raw.base.is_some() || raw.max.is_some() => {
            return Err(invalid(
                key("delays"),
                "give delays (a list) or base and max (exponential), not both",
            ));
        }
        Some(delays) if delays.is_empty() => {
            return Err(invalid(key("delays"), "must name at least one delay"));
        }
        Some(delays) if delays.iter().any(too_long) => {
            return Err(invalid(key("delays"), "each delay must be at most 7 days"));
        }
        Some(delays) => Backoff::List(delays),
        None => {
            let base = raw.base.unwrap_or(Duration::from_secs(1));
            let max = raw.max.unwrap_or(Duration::from_secs(300)).max(base);
            if base.is_zero() {
                return Err(invalid(key("base"), "must be more than 0s"));
            }
            if too_long(&max) {
                return Err(invalid(key("max"), "must be at most 7 days"));
            }
            Backoff::Exponential {
                base,
                max,
                jitter: raw.jitter,
            }
        }
    };
    Ok(RetryPolicy {
        attempts: raw.attempts,
        on_exit_codes: raw.on_exit_codes.into_iter().collect(),
        on_timeout: raw.on_timeout,
        on_stale: raw.on_stale,
        on_request: raw.on_request,
        backoff,
    })
}
