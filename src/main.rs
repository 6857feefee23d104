//! The `agent-sidecar` command: parses the command line and calls the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;

mod client;
mod tail;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use agent_sidecar::config::{Config, LogFormat};
use agent_sidecar::contract::{
    DeliveryStatus, FieldError, Inputs, Manifest, parse_manifest, schema,
};
use agent_sidecar::jobdir::JobDir;
use agent_sidecar::store::{self, DeliveryFilter, DeliveryQuery};

#[derive(Parser)]
#[command(
    name = "agent-sidecar",
    version,
    about = "Runs a Rails app's AI agents and calls Rails back, signed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Log format on stderr (overrides `[logging] format`).
        #[arg(long, env = "AGENT_SIDECAR_LOG_FORMAT")]
        log_format: Option<LogFormat>,
    },
    /// Run the example job end to end on loopback and print its timeline.
    Demo {
        /// A TOML config file to run instead of the built-in example
        /// (`agent-sidecar.example.toml`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a manifest.json against the schema its schema_version names.
    Validate {
        /// Path to a manifest.json.
        manifest: PathBuf,
    },
    /// Check a config file (and the environment overrides) without starting anything.
    CheckConfig {
        /// The TOML config file (also as --config FILE, like every other command).
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// The TOML config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Create or upgrade the store's schema (what `serve` does on start; safe while other
    /// nodes start or run).
    Migrate {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Inspect callback deliveries (`list` reads the store, with the daemon running or
    /// stopped), redrive them or send one now (`redrive`, `deliver`: through a running
    /// sidecar's API).
    Deliveries {
        #[command(subcommand)]
        action: DeliveriesCommand,
    },
    /// Print the OpenAPI 3.1 document of the HTTP API.
    Openapi,
    /// Steer jobs through a running sidecar's API.
    Jobs {
        #[command(subcommand)]
        action: JobsCommand,
    },
    /// List, pause and resume agents through a running sidecar's API (a pause is stored: it
    /// holds across restarts and on every node of a fleet).
    Agents {
        #[command(subcommand)]
        action: AgentsCommand,
    },
    /// Inbound API tokens.
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Check the Rails side of the contract.
    Contract {
        #[command(subcommand)]
        action: ContractCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a short-lived token the API accepts, signed with `[server.auth] secret` (for ops
    /// and for tests; Rails mints its own).
    Mint(client::MintArgs),
}

#[derive(Subcommand)]
enum ContractCommand {
    /// Send the golden callbacks (validly signed, badly signed, expired, without job_name, with
    /// an unknown job_name, duplicated) to a Rails app and report per case whether it answered
    /// as the contract says. Exits 1 when any case fails.
    VerifyConsumer(VerifyConsumer),
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("signing").required(true).args(["secret", "config"])))]
struct VerifyConsumer {
    /// The app's progress endpoint, e.g. https://rails.internal/agents/update/42.
    #[arg(long)]
    progress_url: url::Url,
    /// The app's completion endpoint, e.g. https://rails.internal/agents/completed/42.
    #[arg(long)]
    completion_url: url::Url,
    /// A job_name the app's registry knows.
    #[arg(long, default_value = "ReportCompileJob")]
    job_name: String,
    /// Sign with this HS256 shared secret (the app's [callbacks.jwt] secret).
    #[arg(long, env = "AGENT_SIDECAR_VERIFY_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Sign and send exactly as this sidecar config does: its secret or its asymmetric signing
    /// key (the app verifies against the sidecar's JWKS), Standard Webhooks, mTLS.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// `iss` with --secret.
    #[arg(long, default_value = "agent-sidecar", requires = "secret")]
    issuer: String,
    /// `aud` with --secret.
    #[arg(long, default_value = "rails", requires = "secret")]
    audience: String,
    /// A Standard Webhooks secret (whsec_...) the app checks, with --secret; repeatable.
    #[arg(long = "webhook-secret", requires = "secret")]
    webhook_secrets: Vec<String>,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Follow a job's output/events.jsonl live; ends once its completion is delivered or dead.
    Tail {
        /// The job's id.
        job_id: String,
        /// The TOML config file (for shared_root).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print a job's status: every state change and every callback attempt (its audit trail).
    Show {
        /// The job's id.
        job_id: String,
        #[command(flatten)]
        target: client::Target,
    },
    /// List jobs, newest first (the filters of `GET /jobs`).
    List {
        #[command(flatten)]
        query: client::ListQuery,
        #[command(flatten)]
        target: client::Target,
    },
    /// Cancel a job: a queued one never starts, a running one's agent is stopped.
    Cancel {
        /// The job's id.
        job_id: String,
        #[command(flatten)]
        target: client::Target,
    },
    /// Re-run a job that ended failed, timed_out or canceled as its next attempt (its
    /// output/ moved aside to output.attempt-<n>/).
    Retry {
        /// The job's id.
        job_id: String,
        /// Re-run a completed job too.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: client::Target,
    },
}

#[derive(Subcommand)]
enum AgentsCommand {
    /// Each agent's state, limits, queued and running jobs.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: client::Target,
    },
    /// Pause an agent (or, with --all, every agent): queued jobs stay queued, running ones
    /// finish, triggers are still accepted.
    Pause {
        #[command(flatten)]
        which: client::WhichAgent,
        #[command(flatten)]
        target: client::Target,
    },
    /// Resume an agent (or, with --all, lift the pause of every agent).
    Resume {
        #[command(flatten)]
        which: client::WhichAgent,
        #[command(flatten)]
        target: client::Target,
    },
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// List deliveries, newest first (e.g. `--state dead`).
    List {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        query: DeliveryQuery,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put dead deliveries back in a running sidecar's outbox, sent at once (one by --id, or
    /// all matching the filters; through its API).
    Redrive {
        /// The delivery to redrive.
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        query: DeliveryQuery,
        #[command(flatten)]
        target: client::Target,
    },
    /// Send a pending delivery now instead of at its next scheduled attempt (through a running
    /// sidecar's API).
    Deliver {
        /// The delivery's id (dlv_...).
        id: String,
        #[command(flatten)]
        target: client::Target,
    },
}

fn main() -> ExitCode {
    agent_sidecar::memory::limit_arenas();
    // Fault injection (`FAILPOINTS=name=action`) in the tests' build only; nothing otherwise.
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, log_format } => serve(config, log_format),
        Command::Demo { config } => {
            init_tracing(LogFormat::Text, "warn");
            runtime()
                .and_then(|rt| rt.block_on(agent_sidecar::tools::demo::run_demo(config.as_deref())))
        }
        Command::Validate { manifest } => return validate(&manifest),
        Command::CheckConfig { file, config } => match file.or(config) {
            Some(path) => check_config(&path),
            None => Err(anyhow::anyhow!("give the config file")),
        },
        Command::Migrate { config } => runtime().and_then(|rt| rt.block_on(migrate(&config))),
        Command::Deliveries { action } => runtime().and_then(|rt| rt.block_on(deliveries(action))),
        Command::Openapi => {
            print!("{}", agent_sidecar::api::openapi::document_json());
            Ok(())
        }
        Command::Jobs { action } => runtime().and_then(|rt| rt.block_on(jobs(action))),
        Command::Agents { action } => runtime().and_then(|rt| rt.block_on(agents(action))),
        Command::Token {
            action: TokenCommand::Mint(args),
        } => client::mint(args),
        Command::Contract {
            action: ContractCommand::VerifyConsumer(args),
        } => return verify_consumer(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: many errors already say their
/// cause, which `{:#}` would print a second time.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
    }
    line
}

/// Threads for blocking work (SQLite reads, output files); far more than the cores, far fewer
/// than tokio's default 512.
const BLOCKING_THREADS: usize = 16;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        // Store reads run on the blocking pool; every extra thread keeps its own malloc arena.
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()?)
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colour only on a terminal: a log file or journald gets no escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

fn serve(config: PathBuf, log_format: Option<LogFormat>) -> anyhow::Result<()> {
    let config = Config::load(&config)?;
    init_tracing(
        log_format.unwrap_or(config.logging.format),
        &config.logging.level,
    );
    // Forked now, while the process is one thread and small (see runner::guardian).
    let guardian = agent_sidecar::runner::guardian::Guardian::start(&config.store)
        .context("cannot start the guardian of the agents")?;
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
        let tls = config.server.tls.is_some();
        let shutdown = shutdown_signal().context("cannot install the SIGTERM/SIGINT handlers")?;
        let sidecar =
            agent_sidecar::Sidecar::start_guarded(config, listener, Some(guardian)).await?;
        let scheme = if tls { "https" } else { "http" };
        println!(
            "agent-sidecar listening on {scheme}://{}",
            sidecar.local_addr()?
        );
        sidecar.serve(shutdown).await
    })
}

/// Installs the SIGTERM and SIGINT handlers now (a signal that arrives before the returned
/// future is first polled is not lost, and does not kill the process undrained).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

fn verify_consumer(args: VerifyConsumer) -> ExitCode {
    let run = || -> anyhow::Result<bool> {
        let target = agent_sidecar::tools::consumer_check::Target {
            progress_url: args.progress_url,
            completion_url: args.completion_url,
            job_name: args
                .job_name
                .parse()
                .map_err(|e| anyhow::anyhow!("--job-name: {e}"))?,
        };
        agent_sidecar::install_crypto_provider();
        let checker = match (&args.config, &args.secret) {
            (Some(path), _) => agent_sidecar::tools::consumer_check::Checker::from_callbacks(
                &Config::load(path)?.callbacks,
            )?,
            (None, Some(secret)) => agent_sidecar::tools::consumer_check::Checker::with_secret(
                secret,
                &args.issuer,
                &args.audience,
                &args.webhook_secrets,
            )?,
            (None, None) => anyhow::bail!("give --secret or --config"),
        };
        let outcomes = runtime()?.block_on(checker.run(&target));
        print!(
            "{}",
            agent_sidecar::tools::consumer_check::report(&outcomes)
        );
        Ok(outcomes.iter().all(|o| o.passed()))
    };
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match parse_manifest(&bytes) {
        Ok(manifest) => match input_errors(path, &manifest) {
            errors if errors.is_empty() => {
                println!("valid (schema v{})", manifest.version());
                ExitCode::SUCCESS
            }
            errors => {
                println!(
                    "invalid (schema v{}): {} error(s)",
                    manifest.version(),
                    errors.len()
                );
                print_errors(&errors);
                ExitCode::FAILURE
            }
        },
        Err(invalid) => {
            let version = invalid.version.map_or_else(
                || {
                    format!(
                        "known versions: {}",
                        schema::KNOWN_VERSIONS.map(|v| format!("v{v}")).join(", ")
                    )
                },
                |v| format!("schema v{v}"),
            );
            println!("invalid ({version}): {} error(s)", invalid.errors.len());
            print_errors(&invalid.errors);
            ExitCode::FAILURE
        }
    }
}

fn print_errors(errors: &[FieldError]) {
    for e in errors {
        let pointer = if e.pointer.is_empty() {
            "(document)"
        } else {
            &e.pointer
        };
        println!("  {pointer}: {}", e.detail);
    }
}

/// What the trigger checks of a v2 manifest's files (present under `input/` without a link,
/// of the declared bytes and SHA-256), for a manifest at `<job_id>/input/manifest.json`.
fn input_errors(path: &std::path::Path, manifest: &Manifest) -> Vec<FieldError> {
    let Inputs::Files(files) = &manifest.inputs else {
        return Vec::new();
    };
    let job_dir = path
        .canonicalize()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.to_owned()))
        .filter(|dir| dir.join("input/manifest.json").is_file());
    let job_id = manifest.job_id.to_string();
    let Some(job_dir) = job_dir.filter(|d| d.file_name().is_some_and(|n| n == job_id.as_str()))
    else {
        let detail = format!(
            "the manifest is not at {job_id}/input/manifest.json, so its input files cannot be checked"
        );
        return vec![FieldError::new("/job_id", detail)];
    };
    let shared_root = job_dir.parent().unwrap_or(&job_dir);
    // Only read here: the modes of what the sidecar writes do not matter.
    match JobDir::open(shared_root, manifest.job_id, Default::default()) {
        // One look at each file: nothing to remember, and no daemon's cap applies.
        Ok(dir) => dir.check_inputs(files, &agent_sidecar::jobdir::InputHashes::new(0), None),
        Err(e) => vec![FieldError::new("/job_id", e.to_string())],
    }
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    agent_sidecar::install_crypto_provider();
    let failed: Vec<String> = agent_sidecar::preflight::offline(&config)
        .into_iter()
        .filter_map(|v| v.outcome.err().map(|why| format!("{}: {why}", v.name)))
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("{}", failed.join("; "));
    }
    let registry = config.agents.snapshot();
    let agents: Vec<&str> = registry.keys().map(|a| a.as_str()).collect();
    println!(
        "config OK: listen {}, shared_root {}, {} agent(s): {}",
        config.server.listen,
        config.storage.shared_root.display(),
        agents.len(),
        agents.join(", ")
    );
    Ok(())
}

async fn migrate(config: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let applied = store::migrate(&config.store).await?;
    println!("store schema up to date ({applied} migration(s) applied)");
    Ok(())
}

async fn deliveries(action: DeliveriesCommand) -> anyhow::Result<()> {
    match action {
        DeliveriesCommand::List {
            config,
            query,
            json,
        } => {
            let filter = parse_filter(query)?;
            let store = {
                let config = Config::load(&config)?;
                store::open(&config.store, config.jobs.events_per_job).await?
            };
            for d in store.list_deliveries(filter).await? {
                if json {
                    println!("{}", serde_json::to_string(&d)?);
                } else {
                    println!("{}", delivery_line(&d));
                }
            }
            Ok(())
        }
        DeliveriesCommand::Redrive { id, query, target } => {
            // Refused here with the flag's name, before any call.
            parse_filter(query.clone())?;
            client::redrive(&target, id.as_deref(), &query).await
        }
        DeliveriesCommand::Deliver { id, target } => client::deliver(&target, &id).await,
    }
}

fn parse_filter(query: DeliveryQuery) -> anyhow::Result<DeliveryFilter> {
    query.into_filter().map_err(|errors| {
        let reasons: Vec<String> = errors
            .iter()
            .map(|e| {
                format!(
                    "--{}: {}",
                    e.pointer.trim_start_matches('/').replace('_', "-"),
                    e.detail
                )
            })
            .collect();
        anyhow::anyhow!(reasons.join("; "))
    })
}

fn delivery_line(d: &DeliveryStatus) -> String {
    let last = match (d.last_status_code, &d.last_error) {
        (Some(code), _) => format!("HTTP {code}"),
        (None, Some(error)) => error.clone(),
        (None, None) => "-".to_owned(),
    };
    format!(
        "{}  {:<9}  attempts {:<3}  last {:<10}  {}  job {}  {}  created {}",
        d.delivery_id,
        d.state.as_str(),
        d.attempts,
        last,
        d.job_name,
        d.job_id,
        d.destination,
        d.created_at
    )
}

async fn agents(action: AgentsCommand) -> anyhow::Result<()> {
    match action {
        AgentsCommand::List { json, target } => client::agents(&target, json).await,
        AgentsCommand::Pause { which, target } => client::pause(&target, &which, true).await,
        AgentsCommand::Resume { which, target } => client::pause(&target, &which, false).await,
    }
}

async fn jobs(action: JobsCommand) -> anyhow::Result<()> {
    match action {
        JobsCommand::Cancel { job_id, target } => {
            let (status, _) = client::call(
                &target,
                reqwest::Method::POST,
                &format!("/jobs/{job_id}/cancel"),
            )
            .await?;
            match status {
                200 => println!("job {job_id} canceled (it had not started)"),
                _ => println!("job {job_id}: stopping its agent; it ends canceled"),
            }
        }
        JobsCommand::Tail { job_id, config } => {
            let config = Config::load(&config)?;
            let job_id: agent_sidecar::contract::JobId = job_id
                .parse()
                .map_err(|e| anyhow::anyhow!("{job_id:?}: {e}"))?;
            let path = config
                .storage
                .shared_root
                .join(job_id.to_string())
                .join("output/events.jsonl");
            tail::follow(&path).await?;
        }
        JobsCommand::Show { job_id, target } => {
            let (_, body) =
                client::call(&target, reqwest::Method::GET, &format!("/jobs/{job_id}")).await?;
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        JobsCommand::List { query, target } => client::list(&target, &query).await?,
        JobsCommand::Retry {
            job_id,
            force,
            target,
        } => client::retry(&target, &job_id, force).await?,
    }
    Ok(())
}
