//! Calling Rails back.
//!
//! Completions go through the durable outbox: [`Store::finish`] writes the callback in the same
//! transaction as the terminal state, and [`Deliveries::run`] leases due rows, posts them and
//! records every attempt, retrying on [`schedule`] until the age limit, then dead-lettering.
//! Each origin has a concurrency limit and a circuit breaker. Progress is best effort and
//! coalesced: one poster per job sends the newest event, at most one post in flight, with a
//! minimum interval between posts; a completion waits until the job's poster is done, which is
//! at once after the agent's output ends (pacing and retries stop then; the newest event is
//! posted once). Nothing a receiver does changes a job's state.

mod completion;
pub mod schedule;
pub mod sign;
pub mod transport;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};
use url::Url;

use crate::config::{CallbacksConfig, Config};
use crate::contract::{DeliveryAttempt, JobId, JobState, ProgressCallback, Timestamp};
use crate::store::{AttemptOutcome, AttemptRecorded, DueDelivery, Store};
use crate::telemetry::{self, CallbackKind};
pub use completion::Outcome;
use schedule::Failure;
use sign::{CallbackEvent, TokenFor};
pub use transport::{Transport, TransportError};

/// Completion attempts in flight at once, across destinations.
const MAX_IN_FLIGHT: usize = 32;
/// Bytes of an error response kept with the attempt.
const ERROR_BODY_BYTES: usize = 512;

/// Per-origin state: a concurrency limit and a circuit breaker.
struct Destination {
    slots: Arc<Semaphore>,
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

/// The delivery side of the sidecar: the outbox worker and the per-job progress posters.
pub struct Deliveries {
    store: Arc<dyn Store>,
    transport: RwLock<Arc<Transport>>,
    source: Option<PathBuf>,
    cfg: CallbacksConfig,
    wake: Notify,
    in_flight: Arc<Semaphore>,
    destinations: Mutex<HashMap<String, Destination>>,
    progress_done: Mutex<HashMap<JobId, watch::Receiver<bool>>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// How one post went.
enum PostResult {
    Acknowledged(u16),
    Rejected {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    Failed {
        error: String,
        timeout: bool,
    },
    Refused(String),
}

impl PostResult {
    /// Whether this counts against the destination's circuit breaker.
    fn is_destination_failure(&self) -> bool {
        match self {
            Self::Acknowledged(_) | Self::Refused(_) => false,
            Self::Rejected { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            Self::Failed { .. } => true,
        }
    }
}

impl Deliveries {
    /// Builds the delivery side from `config` (reloaded from `config.source` on
    /// [`Deliveries::reload`]); tasks are spawned on `tracker` and stop with `cancel`.
    pub fn new(
        store: Arc<dyn Store>,
        config: &Config,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, TransportError> {
        Ok(Arc::new(Self {
            transport: RwLock::new(Arc::new(Transport::build(&config.callbacks)?)),
            source: config.source.clone(),
            cfg: config.callbacks.clone(),
            store,
            wake: Notify::new(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            destinations: Mutex::new(HashMap::new()),
            progress_done: Mutex::new(HashMap::new()),
            tracker,
            cancel,
        }))
    }

    /// The current client and keys (for the `sig` of completion bodies and the JWKS).
    pub fn transport(&self) -> Arc<Transport> {
        Arc::clone(&self.transport.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Rereads the config file's keys and certificates and switches to them; on any error the
    /// current ones stay in force.
    pub fn reload(&self) -> Result<(), String> {
        let Some(source) = &self.source else {
            return Err("no config file to reload from".into());
        };
        let config = Config::load(source).map_err(|e| e.to_string())?;
        let fresh = Transport::build(&config.callbacks).map_err(|e| e.to_string())?;
        self.install(fresh);
        Ok(())
    }

    /// Switches to a transport built elsewhere (a reload that builds everything first).
    pub fn install(&self, fresh: Transport) {
        *self.transport.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        info!("callback keys and certificates reloaded");
    }

    /// How long an attempt may hold a delivery before the outbox makes it again.
    pub fn lease_until(&self, now: Timestamp) -> Timestamp {
        now.plus(self.cfg.timeout * 2 + Duration::from_secs(30))
    }

    /// Makes the first attempt of a completion the caller holds the lease of (see
    /// [`crate::store::Finish::lease_until`]), without a round trip through the outbox.
    pub fn send_now(self: &Arc<Self>, delivery: DueDelivery) {
        let this = Arc::clone(self);
        self.tracker.spawn(async move {
            this.dispatch(delivery).await;
        });
    }

    /// Tells the outbox worker that a new callback is waiting.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The outbox worker: leases due completions and attempts them until cancelled.
    pub async fn run(self: Arc<Self>) {
        loop {
            let now = Timestamp::now();
            let lease_until = self.lease_until(now);
            match self
                .store
                .claim_due_deliveries(now, lease_until, MAX_IN_FLIGHT)
                .await
            {
                Ok(batch) => {
                    for delivery in batch {
                        if !self.dispatch(delivery).await {
                            return;
                        }
                    }
                }
                Err(e) => error!(error = %e, "cannot read the outbox"),
            }
            let wait = self.until_next_due(now).await;
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                () = self.cancel.cancelled() => return,
            }
        }
    }

    /// Starts one attempt, or defers it while its destination's breaker is open. `false` when
    /// shutting down.
    async fn dispatch(self: &Arc<Self>, delivery: DueDelivery) -> bool {
        let origin = delivery.url.origin().ascii_serialization();
        let (slots, open_until) = self.destination(&origin);
        if let Some(until) = open_until {
            let wait = until.saturating_duration_since(Instant::now());
            let resume = Timestamp::now().plus(wait);
            debug!(delivery.id = %delivery.id, %origin, "circuit open; delivery deferred");
            if let Err(e) = self.store.defer(&delivery.id, resume).await {
                error!(error = %e, "cannot defer a delivery");
            }
            return true;
        }
        let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
            return false;
        };
        let this = Arc::clone(self);
        let span = info_span!("delivery", delivery.id = %delivery.id, job_id = %delivery.job_id, job_name = %delivery.job_name, agent_name = %delivery.agent_name, trace_id = %delivery.trace_id);
        self.tracker.spawn(
            async move {
                // Waiting for a slot of this origin does not hold up other origins.
                if let Ok(slot) = slots.acquire_owned().await {
                    this.attempt(delivery, origin, slot).await;
                }
                drop(permit);
            }
            .instrument(span),
        );
        true
    }

    fn destination(&self, origin: &str) -> (Arc<Semaphore>, Option<Instant>) {
        let mut all = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        let d = all.entry(origin.to_owned()).or_insert_with(|| Destination {
            slots: Arc::new(Semaphore::new(self.cfg.per_destination_concurrency)),
            consecutive_failures: 0,
            open_until: None,
        });
        let open = d.open_until.filter(|until| *until > Instant::now());
        (Arc::clone(&d.slots), open)
    }

    /// Counts a result against its origin's breaker; opens it after too many failures in a row.
    fn count(&self, origin: &str, failed: bool) {
        let mut all = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        let Some(d) = all.get_mut(origin) else { return };
        if !failed {
            d.consecutive_failures = 0;
            d.open_until = None;
            return;
        }
        d.consecutive_failures += 1;
        if d.consecutive_failures >= self.cfg.breaker_threshold {
            d.open_until = Some(Instant::now() + self.cfg.breaker_cooldown);
            warn!(%origin, failures = d.consecutive_failures, cooldown = ?self.cfg.breaker_cooldown, "circuit breaker open: holding deliveries to this origin");
        }
    }

    async fn until_next_due(&self, now: Timestamp) -> Duration {
        match self.store.next_delivery_due().await {
            Ok(Some(at)) => {
                Duration::from_millis(at.millis_since(now)).min(Duration::from_secs(60))
            }
            Ok(None) => Duration::from_secs(60),
            Err(e) => {
                error!(error = %e, "cannot read the outbox");
                Duration::from_secs(5)
            }
        }
    }

    async fn attempt(&self, d: DueDelivery, origin: String, _slot: OwnedSemaphorePermit) {
        self.progress_drained(d.job_id).await;
        let at = Timestamp::now();
        let started = Instant::now();
        let transport = self.transport();
        let token = transport.signer.callback_token(
            &TokenFor {
                event: CallbackEvent::Completion,
                job_id: d.job_id,
                job_name: &d.job_name,
                status: d.status,
                jti: d.id.as_str(),
                body: &d.body,
            },
            jsonwebtoken::get_current_timestamp(),
        );
        let result = self
            .post(
                &transport,
                &d.url,
                d.body.clone(),
                &token,
                d.id.as_str(),
                &d.trace_id,
            )
            .await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.count(&origin, result.is_destination_failure());
        let (record, outcome) = self.judge(&d, at, latency_ms, result);
        self.log_outcome(&d, &record, outcome);
        telemetry::callback(CallbackKind::Completion, outcome.label(), started.elapsed());
        let recorded = AttemptRecorded {
            job_id: d.job_id,
            delivery_id: d.id.clone(),
            number: d.attempts + 1,
            attempt: record,
            outcome,
        };
        match self.store.record_attempt(recorded).await {
            // The worker slept until this lease's end; the retry may be due much sooner.
            Ok(()) => self.wake(),
            // The lease expires and the attempt is made again: at-least-once, same delivery id.
            Err(e) => error!(error = %e, "cannot record a delivery attempt"),
        }
    }

    fn judge(
        &self,
        d: &DueDelivery,
        at: Timestamp,
        latency_ms: u64,
        result: PostResult,
    ) -> (DeliveryAttempt, AttemptOutcome) {
        let mut record = DeliveryAttempt {
            at,
            status_code: None,
            error: None,
            latency_ms,
        };
        let retry = |failure, retry_after| {
            let age = Duration::from_millis(at.millis_since(d.age_from));
            let delay = schedule::next_delay(
                &self.cfg.retry_schedule,
                d.attempts + 1,
                failure,
                retry_after,
                rand::random::<f64>() * 2.0 - 1.0,
            );
            if age + delay > self.cfg.max_age {
                AttemptOutcome::Dead
            } else {
                AttemptOutcome::RetryAt(at.plus(delay))
            }
        };
        let outcome = match result {
            PostResult::Acknowledged(status) => {
                record.status_code = Some(status);
                AttemptOutcome::Delivered
            }
            PostResult::Rejected {
                status: 401, body, ..
            } => {
                record.status_code = Some(401);
                record.error = Some(body);
                self.after_unauthorized(d, at)
            }
            PostResult::Rejected {
                status,
                body,
                retry_after,
            } => {
                record.status_code = Some(status);
                record.error = Some(body);
                if schedule::is_retryable_status(status) {
                    let failure = if status == 429 {
                        Failure::Overloaded
                    } else {
                        Failure::Transient
                    };
                    retry(failure, retry_after)
                } else {
                    AttemptOutcome::Dead
                }
            }
            PostResult::Failed { error, timeout } => {
                record.error = Some(error);
                retry(
                    if timeout {
                        Failure::Overloaded
                    } else {
                        Failure::Transient
                    },
                    None,
                )
            }
            PostResult::Refused(reason) => {
                record.error = Some(reason);
                AttemptOutcome::Dead
            }
        };
        (record, outcome)
    }

    /// A 401 may mean Rails rotated keys before we did: reload ours and retry once, at once.
    /// A second 401 in a row is permanent.
    fn after_unauthorized(&self, d: &DueDelivery, at: Timestamp) -> AttemptOutcome {
        if d.last_status_code == Some(401) {
            return AttemptOutcome::Dead;
        }
        if let Err(reason) = self.reload() {
            warn!(%reason, "401 from the receiver; keys not reloaded");
        }
        AttemptOutcome::RetryAt(at)
    }

    fn log_outcome(&self, d: &DueDelivery, record: &DeliveryAttempt, outcome: AttemptOutcome) {
        let destination = d.url.origin().ascii_serialization();
        let attempt = d.attempts + 1;
        match outcome {
            AttemptOutcome::Delivered => {
                info!(attempt, latency_ms = record.latency_ms, %destination, "completion delivered")
            }
            AttemptOutcome::RetryAt(next) => warn!(
                attempt,
                status = record.status_code,
                error = record.error.as_deref(),
                %destination,
                next_attempt_at = %next,
                "completion not delivered; will retry"
            ),
            AttemptOutcome::Dead => error!(
                attempt,
                status = record.status_code,
                error = record.error.as_deref(),
                %destination,
                "completion dead-lettered"
            ),
        }
    }

    async fn post(
        &self,
        transport: &Transport,
        url: &Url,
        body: Vec<u8>,
        token: &str,
        id: &str,
        trace_id: &str,
    ) -> PostResult {
        if !transport.allows(url) {
            return PostResult::Refused(format!(
                "origin {} is not in callbacks.allowed_origins",
                url.origin().ascii_serialization()
            ));
        }
        let mut request = transport
            .client
            .post(url.clone())
            .header("traceparent", crate::contract::trace::traceparent(trace_id));
        let now = jsonwebtoken::get_current_timestamp();
        for (name, value) in transport.signer.callback_headers(token, id, &body, now) {
            request = request.header(name, value);
        }
        let mut response = match request.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                if let Some(refused) = transport::PrivateAddress::in_chain(&e) {
                    return PostResult::Refused(refused.to_string());
                }
                return PostResult::Failed {
                    timeout: e.is_timeout(),
                    error: transport_error(&e),
                };
            }
        };
        let status = response.status().as_u16();
        if response.status().is_success() {
            return PostResult::Acknowledged(status);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut head = Vec::new();
        while head.len() < ERROR_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => head.extend_from_slice(&chunk),
                _ => break,
            }
        }
        head.truncate(ERROR_BODY_BYTES);
        PostResult::Rejected {
            status,
            body: format!("HTTP {status}: {}", String::from_utf8_lossy(&head)),
            retry_after,
        }
    }

    async fn progress_drained(&self, job_id: JobId) {
        let done = self
            .progress_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&job_id)
            .cloned();
        if let Some(mut done) = done {
            // Bounded: a poster gives up on a post after its retries, each within the timeout.
            let limit = self.cfg.timeout * (self.cfg.progress_retries + 2);
            let _ = tokio::time::timeout(limit, done.wait_for(|d| *d)).await;
        }
    }

    /// Starts the progress poster of one job; dropping the returned sender finishes it after
    /// its last event is posted or dropped.
    pub fn progress_poster(
        self: &Arc<Self>,
        job_id: JobId,
        url: Url,
        trace_id: String,
    ) -> watch::Sender<Option<ProgressCallback>> {
        let (tx, rx) = watch::channel(None::<ProgressCallback>);
        // Registered before any event exists, so a completion can never overtake the poster.
        let (done_tx, done_rx) = watch::channel(false);
        self.progress_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job_id, done_rx);
        let this = Arc::clone(self);
        self.tracker.spawn(
            async move {
                this.post_progress(url, &trace_id, rx).await;
                let _ = done_tx.send(true);
                this.progress_done
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&job_id);
            }
            .in_current_span(),
        );
        tx
    }

    /// Posts the job's newest progress event, one post in flight, `progress_min_interval`
    /// apart, retrying a failed post, while the agent's stdout is open. Once it ends, pacing
    /// and retries stop: the newest event not yet settled is posted once, at once, and the
    /// poster finishes. The completion waits for the poster (order), never for its pacing.
    async fn post_progress(
        &self,
        url: Url,
        trace_id: &str,
        mut rx: watch::Receiver<Option<ProgressCallback>>,
    ) {
        // Seqs start at 1; events printed meanwhile collapse into the newest (coalescing).
        let mut settled = 0u64;
        let mut open = true;
        loop {
            let newest = rx.borrow_and_update().clone().filter(|e| e.seq > settled);
            match newest {
                Some(event) => {
                    let retries = if open { self.cfg.progress_retries } else { 0 };
                    match self
                        .post_one_progress(&url, trace_id, &event, retries, &mut rx)
                        .await
                    {
                        Posted::Settled => settled = event.seq,
                        Posted::Abandoned => open = false,
                    }
                    if open {
                        open = self.pace(&mut rx).await;
                    }
                }
                None if open => open = rx.changed().await.is_ok(),
                None => return,
            }
        }
    }

    /// Waits `progress_min_interval`, cut short when the agent's stdout ends; `false` then.
    async fn pace(&self, rx: &mut watch::Receiver<Option<ProgressCallback>>) -> bool {
        tokio::select! {
            () = tokio::time::sleep(self.cfg.progress_min_interval) => true,
            () = stdout_ended(rx) => false,
        }
    }

    /// One progress event, with up to `retries` retries on a retryable failure; abandoned
    /// (not retried further) as soon as the agent's stdout ends.
    async fn post_one_progress(
        &self,
        url: &Url,
        trace_id: &str,
        event: &ProgressCallback,
        retries: u32,
        rx: &mut watch::Receiver<Option<ProgressCallback>>,
    ) -> Posted {
        let body = serde_json::to_vec(event).unwrap_or_default();
        let id = format!("prg_{}_{}", event.job_id.as_uuid().simple(), event.seq);
        for attempt in 0..=retries {
            if attempt > 0 {
                let backoff = Duration::from_millis(200) * 2u32.pow(attempt);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stdout_ended(rx) => {
                        debug!(seq = event.seq, "the job's output ended; progress retry abandoned");
                        return Posted::Abandoned;
                    }
                }
            }
            let transport = self.transport();
            let token = transport.signer.callback_token(
                &TokenFor {
                    event: CallbackEvent::Progress,
                    job_id: event.job_id,
                    job_name: &event.job_name,
                    status: JobState::InProgress,
                    jti: &id,
                    body: &body,
                },
                jsonwebtoken::get_current_timestamp(),
            );
            let started = Instant::now();
            let result = self
                .post(&transport, url, body.clone(), &token, &id, trace_id)
                .await;
            let outcome = match &result {
                PostResult::Acknowledged(_) => "delivered",
                PostResult::Refused(_) => "refused",
                PostResult::Rejected { status, .. } if !schedule::is_retryable_status(*status) => {
                    "dropped"
                }
                _ if attempt == retries => "dropped",
                _ => "retry",
            };
            telemetry::callback(CallbackKind::Progress, outcome, started.elapsed());
            match result {
                PostResult::Acknowledged(_) => return Posted::Settled,
                PostResult::Refused(reason) => {
                    warn!(%reason, "progress callback refused");
                    return Posted::Settled;
                }
                PostResult::Rejected { status, .. } if !schedule::is_retryable_status(status) => {
                    debug!(
                        status,
                        seq = event.seq,
                        "progress callback rejected; dropped"
                    );
                    return Posted::Settled;
                }
                _ => debug!(seq = event.seq, attempt, "progress callback failed"),
            }
        }
        debug!(seq = event.seq, "progress callback dropped after retries");
        Posted::Settled
    }
}

/// How one progress event's posting ended.
enum Posted {
    /// Delivered, refused, rejected, or failed through all its retries: not posted again.
    Settled,
    /// The agent's stdout ended during a retry's backoff; the final flush posts it once more.
    Abandoned,
}

/// Resolves when the job's pump drops its sender: the agent's stdout has ended and no newer
/// event will come. Newer events arriving meanwhile are left for the caller (by `seq`).
async fn stdout_ended(rx: &mut watch::Receiver<Option<ProgressCallback>>) {
    while rx.changed().await.is_ok() {}
}

fn transport_error(e: &reqwest::Error) -> String {
    // The reqwest error's Display includes the URL; keep the cause chain, which is what helps.
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
