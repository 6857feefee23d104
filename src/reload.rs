//! Reloading keys, certificates and the agent registry without a restart: on SIGHUP (`systemctl reload`) and when
//! the content of the config file or of a key or certificate file it names changes (watched
//! with `notify`, debounced). The file is read once, everything is built, then all of it is
//! switched, or nothing: a file that fails to load is refused with one log line and the old
//! ones stay.
//!
//! Only content counts: inotify also reports opens and reads (a `cat`, `check-config`, the
//! reload's own read), so events are filtered by kind and, after the debounce, the watched
//! files' SHA-256 is compared with what the last reload read. A read can never start a reload,
//! and a reload's own read cannot start the next one.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
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
    /// What the watched files held when they were last read for a reload; one reload at a
    /// time (SIGHUP and a file change may coincide).
    read: std::sync::Mutex<Fingerprint>,
}

/// The SHA-256 of each watched file's content (`None`: unreadable), following links, so a
/// swapped symlink counts as a change and an unchanged file does not.
#[derive(Debug, PartialEq, Eq, Default)]
struct Fingerprint(Vec<(PathBuf, Option<[u8; 32]>)>);

impl Fingerprint {
    fn of(files: &BTreeSet<PathBuf>) -> Self {
        let digest = |path: &PathBuf| std::fs::read(path).ok().map(|b| Sha256::digest(b).into());
        Self(files.iter().map(|f| (f.clone(), digest(f))).collect())
    }
}

impl Reloadable {
    /// What a reload replaces, with the files as they are now (what the start just read).
    pub fn new(
        deliveries: Arc<Deliveries>,
        gate: Arc<api::auth::Gate>,
        tls: Arc<api::listener::TlsSettings>,
        running: Arc<Config>,
    ) -> Self {
        let read = std::sync::Mutex::new(Fingerprint::of(&watched_files(&running)));
        Self {
            deliveries,
            gate,
            tls,
            running,
            read,
        }
    }

    /// Builds everything from the file first, then switches all of it, or nothing.
    pub fn reload(&self) -> Result<(), String> {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        *read = Fingerprint::of(&watched_files(&self.running));
        self.reload_locked()
    }

    /// Reloads only if a watched file's content differs from what the last reload read.
    fn reload_if_changed(&self) -> Option<Result<(), String>> {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let now = Fingerprint::of(&watched_files(&self.running));
        if *read == now {
            return None;
        }
        *read = now;
        Some(self.reload_locked())
    }

    fn reload_locked(&self) -> Result<(), String> {
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
        crate::telemetry::publish_families(config.agents.snapshot().keys());
        info!("keys, certificates and the agent registry reloaded");
        Ok(())
    }

    fn reload_and_log(&self, why: &str) {
        if let Err(reason) = self.reload() {
            refused(&reason, why);
        }
    }
}

fn refused(reason: &str, why: &str) {
    error!(%reason, trigger = why, "reload refused; the current keys and certificates stay in force");
}

/// Whether an event may mean a file's content changed: a write closed, a file created,
/// renamed or removed (an editor's save, `mv` into place, a ConfigMap's `..data` symlink
/// swap). Opens, reads and metadata changes never do.
fn may_change_content(kind: &EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Access(
            AccessKind::Any
                | AccessKind::Read
                | AccessKind::Open(_)
                | AccessKind::Other
                | AccessKind::Close(
                    AccessMode::Any | AccessMode::Read | AccessMode::Execute | AccessMode::Other
                )
        ) | EventKind::Modify(ModifyKind::Metadata(_))
    )
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
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Any content change in a watched folder counts, not only one naming a watched path:
        // a ConfigMap update renames `..data`, never the file itself. The fingerprint decides.
        if event.is_ok_and(|e| may_change_content(&e.kind)) {
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
                let reloadable = Arc::clone(&reloadable);
                let outcome = tokio::task::spawn_blocking(move || reloadable.reload_if_changed()).await;
                if let Ok(Some(Err(reason))) = outcome {
                    refused(&reason, "file change");
                }
            }
            () = cancel.cancelled() => return,
        }
    }
}
