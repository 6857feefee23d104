//! The HTTP API. Each module exposes `router()` with its routes next to their handlers.

mod jobs;
mod trigger;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;

use crate::config::Config;
use crate::error::ApiError;
use crate::runner::Runner;
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    runner: Arc<Runner>,
    shared_root: PathBuf,
    public_url: String,
}

impl AppState {
    /// State over the running parts of the sidecar; `shared_root` must be canonical.
    pub fn new(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        runner: Arc<Runner>,
        shared_root: PathBuf,
        public_url: String,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                runner,
                shared_root,
                public_url,
            }),
        }
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let limit = state.inner.config.server.max_body_bytes;
    Router::new()
        .merge(trigger::router())
        .merge(jobs::router())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
