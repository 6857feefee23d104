//! The HTTP API. Each module exposes `router()` with its routes next to their handlers.

mod agents;
pub(crate) mod artifacts;
pub mod auth;
pub(crate) mod bulk;
pub(crate) mod deliveries;
pub mod folder;
pub(crate) mod jobs;
mod keys;
pub mod listener;
pub mod openapi;
mod ops;
pub(crate) mod overview;
mod refusal;
pub mod token;
mod trigger;
pub(crate) mod watch;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::delivery::Deliveries;
use crate::error::ApiError;
use crate::runner::Runner;
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: Arc<Config>,
    pub(crate) runner: Arc<Runner>,
    pub(crate) deliveries: Arc<Deliveries>,
    pub(crate) shared_root: PathBuf,
    pub(crate) public_url: String,
    pub(crate) shutdown: CancellationToken,
    pub(crate) gate: Arc<auth::Gate>,
    pub(crate) overview: overview::OverviewCache,
    /// The SHA-256 of v2 manifests' input files, by file version.
    pub(crate) input_hashes: Arc<crate::jobdir::InputHashes>,
}

/// The running parts the API drives.
pub struct Parts {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The configuration.
    pub config: Arc<Config>,
    /// The scheduler, woken by triggers.
    pub runner: Arc<Runner>,
    /// The outbox worker, woken by redrives.
    pub deliveries: Arc<Deliveries>,
    /// Canonical `shared_root`.
    pub shared_root: PathBuf,
    /// Base of `status_url`s.
    pub public_url: String,
    /// Cancelled when the sidecar stops: live streams end.
    pub shutdown: CancellationToken,
    /// Who may call (reloaded on SIGHUP).
    pub gate: Arc<auth::Gate>,
}

impl AppState {
    /// State over the running parts of the sidecar.
    pub fn new(parts: Parts) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: parts.store,
                config: parts.config,
                runner: parts.runner,
                deliveries: parts.deliveries,
                shared_root: parts.shared_root,
                public_url: parts.public_url,
                shutdown: parts.shutdown,
                gate: parts.gate,
                overview: overview::OverviewCache::default(),
                input_hashes: Arc::new(crate::jobdir::InputHashes::new(
                    crate::jobdir::InputHashes::DEFAULT_CAPACITY,
                )),
            }),
        }
    }
}

/// The whole API, with `dashboard` (the `ui` module's routes, built over the same state) nested
/// under `/ui`: the dashboard is served exactly where the API is, behind its listener, limits
/// and fallback, while the auth layer leaves `/ui` to the dashboard's own sessions.
pub fn router(state: AppState, dashboard: Router<AppState>) -> Router {
    let limit = state.inner.config.server.max_body_bytes;
    Router::new()
        .merge(trigger::router())
        .merge(agents::router())
        .merge(jobs::router())
        .merge(bulk::router())
        .merge(overview::router())
        .merge(artifacts::router())
        .merge(watch::router())
        .merge(ops::router())
        .merge(openapi::router())
        .merge(deliveries::router())
        .merge(keys::router())
        .nest("/ui", dashboard)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
