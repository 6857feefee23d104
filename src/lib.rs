//! agent-sidecar runs a Rails app's AI agents next to it.
//!
//! Rails writes a job's inputs to `<shared_root>/<job_id>/input/` and POSTs `/agents/trigger`;
//! the sidecar validates the request and the manifest against the versioned schemas, persists the
//! job, runs the named agent as a supervised subprocess, writes `output/`, and calls Rails back
//! with signed progress and completion callbacks.
//!
//! Modules, in the order a job meets them:
//! - [`config`]: the TOML file and its environment overrides, parsed once at start;
//!   [`preflight`] checks what it names (shared root, agent commands) for `/ready` and
//!   `check-config`.
//! - [`api`]: the HTTP API (`/agents/trigger`, `/jobs/{id}`, `/agents` and its pauses), errors
//!   rendered by [`error`]; [`ui`], mission control: the browser dashboard under `/ui`,
//!   server-rendered from the same functions.
//! - [`contract`]: ids, states, wire types and JSON Schemas (pure).
//! - [`jobdir`]: job folders under `shared_root`, resolved without following symlinks.
//! - [`store`]: durable state behind the [`store::Store`] trait (SQLite by default), and its
//!   change feed.
//! - [`mirror`]: `status.json` and `events.jsonl` in each job folder, following the change feed.
//! - [`runner`]: scheduling within concurrency limits, agent supervision, outputs; the guardian
//!   process that kills agents the sidecar can no longer answer for; [`retry`] decides
//!   whether a failed attempt runs again and after how long (pure).
//! - [`fence`]: the lease deadline every write into a job folder checks first.
//! - [`delivery`]: callback signing, retry schedule, the outbox worker and progress posters.
//! - [`reload`]: keys and certificates reread on SIGHUP and when their files change.
//! - [`sweeper`]: ends stuck jobs (stale, over time, too long queued) and prunes old ones.
//! - [`overview`]: the fleet at a glance (counts, queues, percentiles over time), computed from
//!   what the store reads.
//!
//! Beside the path of a job: [`telemetry`] (Prometheus metrics), [`systemd`] (readiness and
//! watchdog), [`memory`] (the allocator's arenas), and [`tools`] (the demo and the consumer
//! contract check, which use the core and are used by nothing in it).
//!
//! [`run`] wires them together; `main.rs` only parses the command line.

// `unsafe` is denied crate-wide (Cargo.toml) and forbidden outright in every module but the
// two that make system calls no safe crate wraps: `memory` (mallopt) and, inside `runner`,
// `runner::process` (clone, pidfd, wait4, the guardian's fork). Each block says why.
#[forbid(unsafe_code)]
pub mod api;
#[forbid(unsafe_code)]
pub mod config;
#[forbid(unsafe_code)]
pub mod contract;
#[forbid(unsafe_code)]
pub mod delivery;
#[forbid(unsafe_code)]
pub mod error;
#[forbid(unsafe_code)]
pub mod fence;
#[forbid(unsafe_code)]
pub mod jobdir;
pub mod memory;
#[forbid(unsafe_code)]
pub mod mirror;
#[forbid(unsafe_code)]
pub mod overview;
#[forbid(unsafe_code)]
pub mod preflight;
#[forbid(unsafe_code)]
pub mod reload;
#[forbid(unsafe_code)]
pub mod retry;
pub mod runner;
#[forbid(unsafe_code)]
pub mod store;
#[forbid(unsafe_code)]
pub mod sweeper;
#[forbid(unsafe_code)]
pub mod systemd;
#[forbid(unsafe_code)]
pub mod telemetry;
#[forbid(unsafe_code)]
pub mod tools;
#[forbid(unsafe_code)]
pub mod ui;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span};

use config::Config;
use delivery::Deliveries;
use runner::Runner;
use sweeper::Sweeper;

/// Once drained, how long open connections get to close before the process stops waiting.
const HTTP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Selects the process-wide TLS crypto provider (ring); harmless to call twice.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs the sidecar on `listener` until `shutdown` resolves, then stops every task it started.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Sidecar::start(config, listener)
        .await?
        .serve(shutdown)
        .await
}

/// A started sidecar: store open, keys loaded, interrupted work recovered, background tasks
/// running; [`Sidecar::serve`] answers HTTP until shutdown.
pub struct Sidecar {
    listener: api::listener::GuardedListener,
    runner: Arc<Runner>,
    mirror: Arc<mirror::Mirror>,
    fence: Arc<fence::Fence>,
    drain_timeout: std::time::Duration,
    router: axum::Router,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Sidecar {
    /// Does everything that can fail before the first request: a sidecar that starts is ready.
    ///
    /// Jobs a previous process left running are concluded and pending callbacks resume.
    pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<Self> {
        Self::start_guarded(config, listener, None).await
    }

    /// [`Sidecar::start`] with the agents' guardian `main` forked before the runtime (see
    /// [`runner::guardian`]): every agent's process group is registered with it, and the
    /// lease deadline it enforces is the one the folder writes are fenced by.
    pub async fn start_guarded(
        config: Config,
        listener: TcpListener,
        guardian: Option<runner::guardian::Guardian>,
    ) -> anyhow::Result<Self> {
        install_crypto_provider();
        telemetry::set_node(&config.store.node_id);
        telemetry::handle();
        telemetry::publish_families(config.agents.snapshot().keys());
        let config = Arc::new(config);
        let shared_root = config.storage.shared_root.canonicalize().with_context(|| {
            format!(
                "storage.shared_root {} is not usable",
                config.storage.shared_root.display()
            )
        })?;
        let store = store::open(&config.store, config.jobs.events_per_job)
            .await
            .context("cannot open the store")?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let lease = guardian
            .as_ref()
            .map_or_else(fence::Lease::local, runner::guardian::Guardian::lease);
        let fence = Arc::new(fence::Fence::new(lease));
        // The mirror hears of every change through the store's feed: nothing else calls it.
        let mirror = mirror::Mirror::new(
            Arc::clone(&store),
            &config,
            shared_root.clone(),
            Arc::clone(&fence),
        );
        tracker.spawn(
            Arc::clone(&mirror)
                .run(cancel.clone())
                .instrument(info_span!("mirror")),
        );
        let deliveries =
            Deliveries::new(Arc::clone(&store), &config, tracker.clone(), cancel.clone())
                .context("cannot load the callback keys and certificates")?;
        let addr = listener.local_addr().context("listener has no address")?;
        let runner = Runner::new(
            Arc::clone(&store),
            Arc::clone(&config),
            Arc::clone(&deliveries),
            (
                shared_root.clone(),
                config.public_url(addr),
                runner::Guard {
                    fence: Arc::clone(&fence),
                    guardian: guardian.map(Arc::new),
                },
            ),
            tracker.clone(),
            cancel.clone(),
        );
        recover(&runner, store.as_ref()).await?;
        tracker.spawn(
            Arc::clone(&deliveries)
                .run()
                .instrument(info_span!("outbox")),
        );
        let (tls, gate) = reloadable(&config, &deliveries, &tracker, &cancel)?;
        spawn_workers(&tracker, &cancel, &runner, &store, &config, &shared_root);

        let listener = api::listener::GuardedListener::new(
            listener,
            config.server.write_timeout,
            config.server.send_buffer_bytes,
            tls,
        )
        .context("cannot set up the listener")?;
        let state = api::AppState::new(api::Parts {
            store,
            config: Arc::clone(&config),
            runner: Arc::clone(&runner),
            deliveries,
            shared_root,
            public_url: config.public_url(addr),
            shutdown: cancel.clone(),
            gate,
        });
        if config.storage.folder_triggers {
            tracker.spawn(
                api::folder::run(state.clone(), cancel.clone())
                    .instrument(info_span!("folder_triggers")),
            );
        }
        Ok(Self {
            listener,
            runner,
            mirror,
            fence,
            drain_timeout: config.jobs.drain_timeout,
            router: api::router(state.clone(), ui::router(state)),
            cancel,
            tracker,
        })
    }

    /// The address the API listens on.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        axum::serve::Listener::local_addr(&self.listener)
    }

    /// Answers HTTP until `shutdown` resolves, then drains: triggers are refused (503), no
    /// new job starts, running ones get `jobs.drain_timeout` to finish before they are stopped
    /// and left for the next start; in-flight callbacks complete; then every task is awaited.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        info!(addr = %self.local_addr()?, "listening");
        systemd::ready();
        let stop = self.cancel.clone();
        let runner = Arc::clone(&self.runner);
        let drain_timeout = self.drain_timeout;
        let app = self
            .router
            .into_make_service_with_connect_info::<api::listener::PeerInfo>();
        let served = axum::serve(self.listener, app).with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown => {}
                () = stop.cancelled() => {}
            }
            info!("shutting down: draining");
            systemd::stopping();
            runner.drain(drain_timeout).await;
            stop.cancel();
        });
        let stopped = self.cancel.clone();
        let served = tokio::select! {
            served = served => served.context("HTTP server failed"),
            () = async { stopped.cancelled().await; tokio::time::sleep(HTTP_GRACE).await } => {
                tracing::warn!("connections still open after the drain; closing them");
                Ok(())
            }
        };
        self.tracker.close();
        self.tracker.wait().await;
        // Every writer has stopped: the job folders catch up with the store, whether or not
        // the lease is still renewed (the heartbeat has stopped; no run is left to fence).
        self.fence.settle();
        self.mirror.flush().await;
        info!("stopped");
        served
    }
}

/// Ends or requeues the jobs a previous process left running, records this node, and frees
/// the callback attempts it left leased: before anything new starts.
async fn recover(runner: &Arc<Runner>, store: &dyn store::Store) -> anyhow::Result<()> {
    let recovered = runner
        .recover()
        .await
        .context("cannot recover interrupted jobs")?;
    if recovered > 0 {
        info!(
            count = recovered,
            "handled jobs interrupted by the previous stop"
        );
    }
    runner
        .beat()
        .await
        .context("cannot record this node in the store")?;
    let released = store
        .release_leases()
        .await
        .context("cannot recover the outbox")?;
    if released > 0 {
        info!(
            count = released,
            "resuming callback attempts interrupted by the previous stop"
        );
    }
    Ok(())
}

/// The listener's TLS settings and the API's auth gate, with the tasks that reload them (and
/// the callback keys) on SIGHUP and when their files change.
fn reloadable(
    config: &Arc<Config>,
    deliveries: &Arc<Deliveries>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<(Arc<api::listener::TlsSettings>, Arc<api::auth::Gate>)> {
    let tls = Arc::new(
        api::listener::TlsSettings::load(config).context("cannot set up the listener's TLS")?,
    );
    let gate = Arc::new(api::auth::Gate::new(
        api::auth::Authenticator::load(config).context("cannot load the API's auth keys")?,
    ));
    let reloadable = Arc::new(reload::Reloadable::new(
        Arc::clone(deliveries),
        Arc::clone(&gate),
        Arc::clone(&tls),
        Arc::clone(config),
    ));
    let hup = reload::sighup().context("cannot install the SIGHUP handler")?;
    tracker.spawn(reload::on_sighup(
        Arc::clone(&reloadable),
        hup,
        cancel.clone(),
    ));
    tracker
        .spawn(reload::on_file_change(reloadable, cancel.clone()).instrument(info_span!("reload")));
    Ok((tls, gate))
}

/// The runner's scheduler, heartbeat and fleet follower, the sweeper and the systemd watchdog.
fn spawn_workers(
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    runner: &Arc<Runner>,
    store: &Arc<dyn store::Store>,
    config: &Arc<Config>,
    shared_root: &std::path::Path,
) {
    tracker.spawn(Arc::clone(runner).run().instrument(info_span!("scheduler")));
    tracker.spawn(
        Arc::clone(runner)
            .keep_leases()
            .instrument(info_span!("heartbeat")),
    );
    tracker.spawn(
        Arc::clone(runner)
            .follow_signals()
            .instrument(info_span!("fleet")),
    );
    let sweeper = Sweeper::new(
        Arc::clone(store),
        Arc::clone(runner),
        Arc::clone(config),
        shared_root.to_path_buf(),
    );
    tracker.spawn(
        sweeper
            .run(cancel.clone())
            .instrument(info_span!("sweeper")),
    );
    tracker.spawn(systemd::watchdog(Arc::clone(store), cancel.clone()));
}
