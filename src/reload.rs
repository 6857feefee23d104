//! Reloading keys, certificates and the agent registry without a restart: on SIGHUP (`systemctl reload`) and when
//! the config file or a key or certificate file it names changes (watched with `notify`,
//! debounced). The file is read once, everything is built, then all of it is switched, or
//! nothing: a file that fails to load is refused with one log line and the old ones stay.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api;
use crate::config::Config;
use crate::delivery::{self, Deliveries};

/// Changes to files closer together than this are one reload (a certificate and its key are
/// written one after the other).
const DEBOUNCE: Duration = Duration::from_millis(500);

/// What a reload replaces: keys and certificates, outbound and inbound.
pub struct Reloadable {
    /// The outbound transport (callback client certificate, CA, signing keys).
    pub deliveries: Arc<Deliveries>,
    /// Inbound JWT keys.
    pub gate: Arc<api::auth::Gate>,
    /// The listener's certificate and client CA.
    pub tls: Arc<api::listener::TlsSettings>,
    /// The configuration the process started with.
    pub running: Arc<Config>,
    /// One reload at a time (SIGHUP and a file change may coincide).
    pub busy: std::sync::Mutex<()>,
}

impl Reloadable {
    /// Builds everything from the file first, then switches all of it, or nothing.
    pub fn reload(&self) -> Result<(), String> {
        let _one_at_a_time = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let Some(source) = &self.running.source else {
            return Err("no config file to reload from".into());
        };
        let config = Config::load(source).map_err(|e| e.to_string())?;
        if config.server.tls.is_some() != self.running.server.tls.is_some()
            || config.server.auth_required() != self.running.server.auth_required()
        {
            return Err(
                "turning [server.tls] or API authentication on or off needs a restart".into(),
            );
        }
        let transport = delivery::Transport::build(&config.callbacks).map_err(|e| e.to_string())?;
        let auth = api::auth::Authenticator::load(&config).map_err(|e| e.to_string())?;
        let tls = api::listener::TlsSettings::prepare(&config).map_err(|e| e.to_string())?;
        self.deliveries.install(transport);
        self.gate.install(auth);
        self.tls.install(tls);
        // Runs in flight keep the definition they started with (their own Arc).
        self.running.agents.replace_with(&config.agents);
        info!("keys, certificates and the agent registry reloaded");
        Ok(())
    }

    fn reload_and_log(&self, why: &str) {
        if let Err(reason) = self.reload() {
            error!(%reason, trigger = why, "reload refused; the current keys and certificates stay in force");
        }
    }
}

/// The SIGHUP handler, installed now: a SIGHUP arriving before the task runs is kept, not
/// fatal (its default action ends the process).
pub fn sighup() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// Reloads on each SIGHUP until `cancel`.
pub async fn on_sighup(
    reloadable: Arc<Reloadable>,
    mut hup: tokio::signal::unix::Signal,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = hup.recv() => reloadable.reload_and_log("SIGHUP"),
            () = cancel.cancelled() => return,
        }
    }
}

/// The config file and every key and certificate file it names.
fn watched_files(config: &Config) -> BTreeSet<PathBuf> {
    let tls = &config.callbacks.tls;
    let mut files: BTreeSet<PathBuf> = [&tls.ca_file, &tls.client_cert_file, &tls.client_key_file]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    files.extend(
        config
            .callbacks
            .jwt
            .keys
            .iter()
            .map(|k| k.private_key_file.clone()),
    );
    if let Some(server) = &config.server.tls {
        files.extend([server.cert_file.clone(), server.key_file.clone()]);
        files.extend(server.client_ca_file.clone());
    }
    if let Some(auth) = &config.server.auth {
        files.extend(auth.public_keys.iter().cloned());
    }
    files.extend(config.source.clone());
    files
}

/// Reloads when a watched file changes (debounced) until `cancel`.
pub async fn on_file_change(reloadable: Arc<Reloadable>, cancel: CancellationToken) {
    let files = watched_files(&reloadable.running);
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let wanted = files.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Editors and `mv` replace files: any event naming a watched path counts.
        if event.is_ok_and(|e| e.paths.iter().any(|p| wanted.contains(p))) {
            let _ = tx.try_send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch the key and certificate files; reload with SIGHUP");
            return;
        }
    };
    // Folders, not files: a replaced file is a new inode the old watch would not see.
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(PathBuf::from))
        .collect();
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            warn!(dir = %dir.display(), error = %e, "cannot watch; changes there need SIGHUP");
        }
    }
    loop {
        tokio::select! {
            Some(()) = rx.recv() => {
                // Let the rest of a multi-file change land, then reload once.
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
                reloadable.reload_and_log("file change");
            }
            () = cancel.cancelled() => return,
        }
    }
}
