//! The fleet store: one PostgreSQL database shared by every sidecar of a fleet.
//!
//! Claims follow the Postgres-backed queues (River, good_job, Oban): a node takes the oldest
//! queued rows of the agents it offers with `FOR UPDATE SKIP LOCKED`, so nodes never wait on each
//! other's claims, and stamps them with a lease (`node_id`, `incarnation`, `lease_until`) that its
//! heartbeat renews. Every write of an attempt is a compare-and-set on `(state, attempt)` under a
//! row lock, so a node that lost its lease writes nothing. Each write transaction ends with one
//! `pg_notify` carrying what other nodes must hear (a job queued, events appended, a cancel); a
//! dedicated connection `LISTEN`s and turns them into local wake-ups.

mod sql;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls, Row};
use tracing::{info, warn};

use super::hub::{AttemptRecorded, Change, Hub};
use super::row::{self, Cols, to_json};
use super::*;
use crate::contract::{DeliveryState, NodeStatus};

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// Advisory lock keys (arbitrary constants, the same on every node).
const MIGRATION_LOCK: i64 = 0x6167_656e_7401;
const LEADER_LOCK: i64 = 0x6167_656e_7402;
const PER_KEY_CLAIM_LOCK: i64 = 0x6167_656e_7403;
const PAUSE_LOCK: i64 = 0x6167_656e_7404;
/// Pause before the listener reconnects after losing its connection.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

type Param<'a> = &'a (dyn ToSql + Sync);
type Args = Vec<Box<dyn ToSql + Sync + Send>>;

/// The PostgreSQL implementation of [`Store`].
pub struct PgStore {
    pool: Pool,
    config: tokio_postgres::Config,
    hub: Arc<Hub>,
    events_per_job: usize,
    node: Node,
    signals: broadcast::Sender<Signal>,
    /// The session holding (or trying for) the leader lock, and whether it holds it.
    leader: tokio::sync::Mutex<Option<(tokio_postgres::Client, bool)>>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Messages other nodes must hear, sent at commit.
#[derive(Default)]
struct Notes(Vec<String>);

impl Notes {
    fn queued(&mut self) {
        self.0.push("q".into());
    }
    fn events(&mut self, job_id: JobId) {
        self.0.push(format!("e:{job_id}"));
    }
    fn cancel(&mut self, job_id: JobId, attempt: u32, node_id: &str) {
        self.0.push(format!("c:{job_id}:{attempt}:{node_id}"));
    }
}

fn pool_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Pool(e.to_string())
}

fn parse_config(url: &str) -> StoreResult<tokio_postgres::Config> {
    tokio_postgres::Config::from_str(url)
        .map_err(|_| StoreError::Pool("store.url is not a valid PostgreSQL URL".into()))
}

/// A connection outside the pool, whose driver runs until the client is dropped.
async fn connect(config: &tokio_postgres::Config) -> StoreResult<tokio_postgres::Client> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

impl PgStore {
    /// Connects, migrates, and starts listening, as `node`.
    pub async fn open(
        url: &str,
        pool_size: usize,
        events_per_job: usize,
        node: Node,
    ) -> StoreResult<Self> {
        let mut config = parse_config(url)?;
        // A paused node must not hold row locks past its lease: the server ends a transaction
        // left idle that long (ours are short), so the others can take its jobs over.
        let options = format!(
            "{} -c idle_in_transaction_session_timeout={}",
            config.get_options().unwrap_or_default(),
            node.lease.as_millis()
        );
        config.options(options.trim());
        Self::migrate(url).await?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(pool_error)?;
        let hub = Arc::new(Hub::default());
        let signals = broadcast::channel(1024).0;
        let listener = tokio::spawn(listen(
            config.clone(),
            Arc::clone(&hub),
            signals.clone(),
            node.id.clone(),
        ));
        Ok(Self {
            pool,
            config,
            hub,
            events_per_job,
            node,
            signals,
            leader: tokio::sync::Mutex::new(None),
            listener,
        })
    }

    /// Applies the migrations under an advisory lock, so nodes starting together take turns;
    /// returns how many were new.
    pub async fn migrate(url: &str) -> StoreResult<usize> {
        let mut client = connect(&parse_config(url)?).await?;
        client.execute(sql::LOCK, &[&MIGRATION_LOCK]).await?;
        let report = embedded::migrations::runner()
            .set_migration_table_name("agent_sidecar_migrations")
            .run_async(&mut client)
            .await;
        client.execute(sql::UNLOCK, &[&MIGRATION_LOCK]).await?;
        let report = report.map_err(|e| StoreError::PgMigration(e.to_string()))?;
        Ok(report.applied_migrations().len())
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs `op` in a transaction that ends with the notes it collected.
    async fn write<T>(
        &self,
        op: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>, &mut Notes) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut notes = Notes::default();
        let value = op(&tx, &mut notes).await?;
        if !notes.0.is_empty() {
            let st = tx.prepare_cached(sql::NOTIFY).await?;
            tx.execute(&st, &[&sql::CHANNEL, &notes.0]).await?;
        }
        tx.commit().await?;
        Ok(value)
    }
}

/// Receives the fleet's notifications until the store is dropped, reconnecting when the
/// connection breaks (and then waking everything, since notifications may have been missed).
async fn listen(
    config: tokio_postgres::Config,
    hub: Arc<Hub>,
    signals: broadcast::Sender<Signal>,
    node_id: String,
) {
    let mut first = true;
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listening = async { client.batch_execute(sql::LISTEN).await };
                // The connection must be polled for the LISTEN to complete.
                let subscribed = tokio::select! {
                    r = listening => r.is_ok(),
                    _ = messages.next() => false,
                };
                if subscribed {
                    if !first {
                        info!("listening to the fleet again");
                        hub.tell(Change::All);
                        let _ = signals.send(Signal::Queued);
                    }
                    first = false;
                    while let Some(Ok(message)) = messages.next().await {
                        if let AsyncMessage::Notification(n) = message {
                            dispatch(n.payload(), &hub, &signals, &node_id);
                        }
                    }
                }
                warn!("lost the fleet's notifications; reconnecting");
            }
            Err(e) => warn!(error = %e, "cannot listen to the fleet; retrying"),
        }
        tokio::time::sleep(RELISTEN_AFTER).await;
    }
}

fn dispatch(payload: &str, hub: &Hub, signals: &broadcast::Sender<Signal>, node_id: &str) {
    let mut parts = payload.splitn(4, ':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("q"), ..) => {
            let _ = signals.send(Signal::Queued);
        }
        (Some("e"), Some(job), ..) => {
            if let Ok(job_id) = job.parse() {
                hub.tell(Change::Heard(job_id));
            }
        }
        (Some("c"), Some(job), Some(attempt), Some(node)) if node == node_id => {
            if let (Ok(job_id), Ok(attempt)) = (job.parse(), attempt.parse()) {
                let _ = signals.send(Signal::Cancel(job_id, attempt));
            }
        }
        _ => {}
    }
}

// ---- statements ----

async fn query<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: &[Param<'_>],
) -> StoreResult<Vec<Row>> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query(&st, params).await?)
}

async fn query_opt<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: &[Param<'_>],
) -> StoreResult<Option<Row>> {
    Ok(query(c, sql, params).await?.into_iter().next())
}

async fn execute<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: &[Param<'_>],
) -> StoreResult<u64> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.execute(&st, params).await?)
}

fn args_ref(args: &Args) -> Vec<Param<'_>> {
    args.iter().map(|a| a.as_ref() as Param<'_>).collect()
}

// ---- row mapping ----

impl row::Cols for Row {
    fn text(&self, col: usize) -> StoreResult<String> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: usize) -> StoreResult<Option<String>> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: usize) -> StoreResult<i64> {
        Ok(self.try_get(col)?)
    }
    fn opt_int(&self, col: usize) -> StoreResult<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    fn count(&self, col: usize) -> StoreResult<u32> {
        Ok(u32::try_from(self.try_get::<_, i32>(col)?).unwrap_or(0))
    }
    fn opt_i32(&self, col: usize) -> StoreResult<Option<i32>> {
        Ok(self.try_get(col)?)
    }
    fn opt_status(&self, col: usize) -> StoreResult<Option<u16>> {
        Ok(self
            .try_get::<_, Option<i32>>(col)?
            .and_then(|c| u16::try_from(c).ok()))
    }
    fn bytes(&self, col: usize) -> StoreResult<Vec<u8>> {
        Ok(self.try_get(col)?)
    }
}

fn jobs_from(rows: Vec<Row>) -> StoreResult<Vec<JobRecord>> {
    rows.iter().map(row::job).collect()
}

async fn load_job<C: GenericClient + Sync>(c: &C, job_id: JobId) -> StoreResult<Option<JobRecord>> {
    query_opt(c, sql::JOB, &[&job_id.to_string()])
        .await?
        .as_ref()
        .map(row::job)
        .transpose()
}

fn attempt_param(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}

// ---- writes ----

/// Appends an event to the job's history, returning its seq (one round trip).
async fn append_event(
    tx: &deadpool_postgres::Transaction<'_>,
    notes: &mut Notes,
    job_id: JobId,
    attempt: u32,
    kind: &str,
    data: &str,
    at: Timestamp,
) -> StoreResult<u64> {
    let row = query_opt(
        tx,
        sql::INSERT_EVENT,
        &[
            &job_id.to_string(),
            &at.unix_ms(),
            &attempt_param(attempt),
            &kind,
            &data,
        ],
    )
    .await?
    .ok_or_else(|| row::corrupt(&job_id.to_string(), "job vanished inside its transaction"))?;
    notes.events(job_id);
    Ok(u64::try_from(row.int(0)?).unwrap_or(0))
}

async fn append_state(
    tx: &deadpool_postgres::Transaction<'_>,
    notes: &mut Notes,
    job_id: JobId,
    attempt: u32,
    state: JobState,
    at: Timestamp,
) -> StoreResult<u64> {
    append_event(tx, notes, job_id, attempt, "state", &to_json(&state), at).await
}

/// Locks the job's row and checks it is still `expected` at `attempt`.
async fn fenced(
    tx: &deadpool_postgres::Transaction<'_>,
    job_id: JobId,
    expected: JobState,
    attempt: u32,
) -> StoreResult<Option<String>> {
    let row = query_opt(tx, sql::FENCE, &[&job_id.to_string()]).await?;
    match row {
        Some(r) if r.text(0)? == expected.as_str() && r.count(1)? == attempt => r.opt_text(2),
        _ => Err(StoreError::Stale {
            job_id,
            expected,
            attempt,
        }),
    }
}

async fn enqueue_in(
    tx: &deadpool_postgres::Transaction<'_>,
    notes: &mut Notes,
    job: NewJob,
) -> StoreResult<Enqueued> {
    let r = &job.request;
    let job_id = r.job_id;
    let inserted = execute(
        tx,
        sql::INSERT_JOB,
        &[
            &job_id.to_string(),
            &r.user_id,
            &r.agent_name.as_str(),
            &r.job_name.as_str(),
            &r.priority.rank(),
            &to_json(r),
            &job.request_sha256,
            &job.trace_id,
            &job.at.unix_ms(),
            &job.sort_at.unix_ms(),
            &job.first_state().as_str(),
            &job.run_at.map(Timestamp::unix_ms),
            &r.concurrency_key,
        ],
    )
    .await?;
    let missing = || row::corrupt(&job_id.to_string(), "job vanished inside its transaction");
    if inserted == 0 {
        let record = load_job(tx, job_id).await?.ok_or_else(missing)?;
        return Ok(if record.request_sha256 == job.request_sha256 {
            Enqueued::Duplicate(record)
        } else {
            Enqueued::Conflict(record)
        });
    }
    append_state(tx, notes, job_id, 0, JobState::Received, job.at).await?;
    append_state(tx, notes, job_id, 0, job.first_state(), job.at).await?;
    // A scheduled job wakes the fleet's schedulers too: each then waits for its `run_at`.
    notes.queued();
    Ok(Enqueued::Created(
        load_job(tx, job_id).await?.ok_or_else(missing)?,
    ))
}

/// Claims what fits: locks the oldest queued rows of the unpaused agents with free slots
/// (skipping rows other nodes are claiming and keys at their limit), keeps those the per-agent
/// slots and per-key limits allow, and leases them.
async fn claim_in(
    tx: &deadpool_postgres::Transaction<'_>,
    notes: &mut Notes,
    node: &Node,
    slots: Vec<Slot>,
    mut free: usize,
    at: Timestamp,
) -> StoreResult<Vec<JobRecord>> {
    execute(tx, sql::LOCK_CLAIMS_SHARED, &[&PAUSE_LOCK]).await?;
    let mut slots = paused_in(tx).await?.unpaused(slots);
    if slots.iter().any(|s| s.max_per_key.is_some()) {
        // Taken before the first count, so the counts below see every other node's claims.
        execute(tx, sql::LOCK_PER_KEY_CLAIMS, &[&PER_KEY_CLAIM_LOCK]).await?;
    }
    let mut claimed = Vec::new();
    loop {
        slots.retain(|s| s.free > 0);
        if free == 0 || slots.is_empty() {
            return Ok(claimed);
        }
        let agents: Vec<&str> = slots.iter().map(|s| s.agent.as_str()).collect();
        let per_key: Vec<Option<i32>> = slots
            .iter()
            .map(|s| s.max_per_key.map(|n| i32::try_from(n).unwrap_or(i32::MAX)))
            .collect();
        let candidates = query(tx, sql::NEXT_QUEUED, &[&agents, &(free as i64), &per_key]).await?;
        let picked = pick(&candidates, &mut slots, &mut free)?;
        if picked.is_empty() {
            return Ok(claimed);
        }
        let rows = query(
            tx,
            sql::CLAIM_JOBS,
            &[
                &picked,
                &at.unix_ms(),
                &node.id,
                &node.incarnation,
                &at.plus(node.lease).unix_ms(),
            ],
        )
        .await?;
        let mut jobs = jobs_from(rows)?;
        // The batch keeps the queue's order.
        jobs.sort_by_key(|j| picked.iter().position(|id| *id == j.job_id.to_string()));
        for job in &jobs {
            append_state(tx, notes, job.job_id, job.attempt, JobState::InProgress, at).await?;
        }
        claimed.extend(jobs);
    }
}

/// The candidates (`job_id, agent_name, concurrency_key, running with the key`, in claim
/// order) that the slots and per-key limits take, counting them off: a key's jobs in one batch
/// count with those already running.
fn pick(candidates: &[Row], slots: &mut [Slot], free: &mut usize) -> StoreResult<Vec<String>> {
    let mut picked = Vec::new();
    let mut batch: std::collections::HashMap<(AgentName, String), i64> = Default::default();
    for row in candidates {
        let agent: AgentName = row.parsed(1)?;
        let Some(slot) = slots.iter_mut().find(|s| s.agent == agent && s.free > 0) else {
            continue;
        };
        if let (Some(key), Some(limit)) = (row.opt_text(2)?, slot.max_per_key) {
            let taken = batch.entry((agent, key)).or_default();
            if row.int(3)? + *taken >= i64::from(limit) {
                continue;
            }
            *taken += 1;
        }
        slot.free -= 1;
        *free -= 1;
        picked.push(row.text(0)?);
        if *free == 0 {
            break;
        }
    }
    Ok(picked)
}

async fn paused_in<C: GenericClient + Sync>(c: &C) -> StoreResult<Paused> {
    let rows = query(c, sql::PAUSED, &[]).await?;
    let scopes = rows
        .iter()
        .map(|r| r.text(0))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Paused::from_scopes(scopes))
}

async fn progress_in(
    tx: &deadpool_postgres::Transaction<'_>,
    notes: &mut Notes,
    job_id: JobId,
    attempt: u32,
    progress: Progress,
    at: Timestamp,
    keep: usize,
) -> StoreResult<ProgressSnapshot> {
    fenced(tx, job_id, JobState::InProgress, attempt).await?;
    let mut snapshot = snapshot(progress, at);
    snapshot.seq = append_event(tx, notes, job_id, attempt, "progress", "null", at).await?;
    let json = to_json(&snapshot);
    let seq = i64::try_from(snapshot.seq).unwrap_or(i64::MAX);
    execute(tx, sql::SET_PROGRESS, &[&job_id.to_string(), &seq, &json]).await?;
    if let Some(oldest_kept) = oldest_kept(snapshot.seq, keep) {
        execute(tx, sql::TRIM_PROGRESS, &[&job_id.to_string(), &oldest_kept]).await?;
    }
    Ok(snapshot)
}

/// Records how the job's current attempt ended (nothing when it never ran, or was recorded).
async fn record_job_attempt(
    tx: &deadpool_postgres::Transaction<'_>,
    job_id: JobId,
    (state, at): (JobState, Timestamp),
    exit_code: Option<i32>,
    error: Option<&JobError>,
    retry_at: Option<Timestamp>,
) -> StoreResult<()> {
    execute(
        tx,
        sql::RECORD_JOB_ATTEMPT,
        &[
            &job_id.to_string(),
            &at.unix_ms(),
            &state.as_str(),
            &exit_code,
            &error.map(to_json),
            &retry_at.map(Timestamp::unix_ms),
        ],
    )
    .await?;
    Ok(())
}

async fn retry_later_in(
    tx: &deadpool_postgres::Transaction<'_>,
    notes: &mut Notes,
    r: &RetryLater,
) -> StoreResult<()> {
    fenced(tx, r.job_id, JobState::InProgress, r.attempt).await?;
    let outcome = (r.state, r.at);
    record_job_attempt(
        tx,
        r.job_id,
        outcome,
        r.exit_code,
        r.error.as_ref(),
        Some(r.run_at),
    )
    .await?;
    execute(
        tx,
        sql::RETRY_LATER,
        &[
            &r.job_id.to_string(),
            &r.run_at.unix_ms(),
            &r.at.unix_ms(),
            &r.schedule_key.unix_ms(),
        ],
    )
    .await?;
    append_state(tx, notes, r.job_id, r.attempt, JobState::Scheduled, r.at).await?;
    notes.queued();
    Ok(())
}

async fn promote_in(
    tx: &deadpool_postgres::Transaction<'_>,
    notes: &mut Notes,
    now: Timestamp,
) -> StoreResult<Vec<JobId>> {
    let rows = query(tx, sql::PROMOTE_DUE, &[&now.unix_ms(), &PROMOTE_BATCH]).await?;
    let mut promoted = Vec::with_capacity(rows.len());
    for r in &rows {
        let (job_id, attempt): (JobId, u32) = (r.parsed(0)?, r.count(1)?);
        append_state(tx, notes, job_id, attempt, JobState::Queued, now).await?;
        promoted.push(job_id);
    }
    if !promoted.is_empty() {
        notes.queued();
    }
    Ok(promoted)
}

async fn finish_in(
    tx: &deadpool_postgres::Transaction<'_>,
    notes: &mut Notes,
    node: &Node,
    f: Finish,
) -> StoreResult<DueDelivery> {
    fenced(tx, f.job_id, f.from, f.attempt).await?;
    f.allowed()?;
    let outcome = (f.state, f.at);
    record_job_attempt(tx, f.job_id, outcome, f.exit_code, f.error.as_ref(), None).await?;
    let job_id = f.job_id.to_string();
    execute(
        tx,
        sql::FINISH_JOB,
        &[
            &job_id,
            &f.state.as_str(),
            &f.at.unix_ms(),
            &f.exit_code,
            &f.error.as_ref().map(to_json),
            &to_json(&f.output_index),
        ],
    )
    .await?;
    append_state(tx, notes, f.job_id, f.attempt, f.state, f.at).await?;
    execute(
        tx,
        sql::INSERT_COMPLETION,
        &[
            &f.completion.id.as_str(),
            &job_id,
            &f.completion.url.as_str(),
            &f.completion.url.origin().ascii_serialization(),
            &f.completion.body,
            &f.at.unix_ms(),
            &f.lease_until.unix_ms(),
            &node.id,
        ],
    )
    .await?;
    let job = load_job(tx, f.job_id).await?.ok_or_else(|| f.stale())?;
    Ok(f.into_due(job))
}

async fn heartbeat_in(
    tx: &deadpool_postgres::Transaction<'_>,
    node: &Node,
    beat: &Beat,
) -> StoreResult<BeatAnswer> {
    let agents: Vec<&str> = beat.agents.iter().map(AgentName::as_str).collect();
    execute(
        tx,
        sql::UPSERT_NODE,
        &[
            &node.id,
            &node.incarnation,
            &to_json(&agents),
            &i32::try_from(beat.running.len()).unwrap_or(i32::MAX),
            &i32::try_from(beat.max_concurrent).unwrap_or(i32::MAX),
            &beat.at.unix_ms(),
        ],
    )
    .await?;
    let ids: Vec<String> = beat.running.iter().map(|(j, _)| j.to_string()).collect();
    let attempts: Vec<i32> = beat
        .running
        .iter()
        .map(|(_, a)| attempt_param(*a))
        .collect();
    let owned = query(
        tx,
        sql::RENEW_LEASES,
        &[
            &ids,
            &attempts,
            &beat.at.plus(node.lease).unix_ms(),
            &node.incarnation,
        ],
    )
    .await?;
    BeatAnswer::sort(&beat.running, |job_id, _| {
        let id = job_id.to_string();
        owned
            .iter()
            .find(|r| r.get::<_, String>(0) == id)
            .map(|r| r.try_get::<_, bool>(1))
            .transpose()
            .map_err(StoreError::from)
    })
}

// ---- reads ----

async fn events_in<C: GenericClient + Sync>(
    c: &C,
    job_id: JobId,
    after_seq: u64,
    limit: usize,
) -> StoreResult<Vec<JobEvent>> {
    let rows = query(
        c,
        sql::EVENTS_AFTER,
        &[
            &job_id.to_string(),
            &i64::try_from(after_seq).unwrap_or(i64::MAX),
            &i64::try_from(limit).unwrap_or(i64::MAX),
        ],
    )
    .await?;
    rows.iter().map(|r| row::event(job_id, r)).collect()
}

async fn view_in<C: GenericClient + Sync>(c: &C, job_id: JobId) -> StoreResult<Option<JobView>> {
    let Some(job) = load_job(c, job_id).await? else {
        return Ok(None);
    };
    let transitions = query(c, sql::TRANSITIONS, &[&job_id.to_string()])
        .await?
        .iter()
        .map(|r| row::transition(job_id, r))
        .collect::<StoreResult<Vec<_>>>()?;
    let filter = DeliveryFilter::one(None);
    let delivery = deliveries_in(c, &filter, Some(job_id))
        .await?
        .into_iter()
        .next();
    let attempts = query(c, sql::JOB_ATTEMPTS, &[&job_id.to_string()])
        .await?
        .iter()
        .map(row::job_attempt)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Some(JobView {
        job,
        transitions,
        delivery,
        attempts,
    }))
}

/// `WHERE` clause (with `$n` placeholders from `first`) and arguments of `conditions`.
fn where_sql(conditions: Vec<Condition>, first: usize) -> (String, Args) {
    let (clause, values) = Condition::render(conditions, first, |n| format!("${n}"));
    let args = values
        .into_iter()
        .map(|v| -> Box<dyn ToSql + Sync + Send> {
            match v {
                FilterValue::Text(t) => Box::new(t),
                FilterValue::Int(n) => Box::new(n),
            }
        })
        .collect();
    (clause, args)
}

/// `WHERE` clause (with `$n` placeholders from `first`) and arguments of a delivery filter.
fn filter_sql(f: &DeliveryFilter, job_id: Option<JobId>, first: usize) -> (String, Args) {
    where_sql(f.conditions(job_id), first)
}

/// `template` with its `{filter}` and `{limit}` filled in.
fn with_filter(template: &str, filter: &str, limit_at: usize) -> String {
    template
        .replace("{filter}", filter)
        .replace("{limit}", &limit_at.to_string())
}

async fn deliveries_in<C: GenericClient + Sync>(
    c: &C,
    f: &DeliveryFilter,
    job_id: Option<JobId>,
) -> StoreResult<Vec<DeliveryStatus>> {
    let (filter, mut args) = filter_sql(f, job_id, 1);
    let limit_at = args.len() + 1;
    args.push(Box::new(i64::try_from(f.limit).unwrap_or(i64::MAX)));
    let sql = with_filter(sql::DELIVERIES, &filter, limit_at);
    let rows = query(c, &sql, &args_ref(&args)).await?;
    let mut found = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut delivery = row::delivery(r)?;
        delivery.history = query(c, sql::ATTEMPTS, &[&delivery.delivery_id.as_str()])
            .await?
            .iter()
            .map(row::attempt)
            .collect::<StoreResult<_>>()?;
        found.push(delivery);
    }
    Ok(found)
}
#[async_trait]
impl Store for PgStore {
    async fn enqueue(&self, job: NewJob) -> StoreResult<Enqueued> {
        let job_id = job.request.job_id;
        let enqueued = self
            .write(async |tx, notes| enqueue_in(tx, notes, job).await)
            .await?;
        if matches!(enqueued, Enqueued::Created(_)) {
            self.hub.tell(Change::Accepted(job_id));
        }
        Ok(enqueued)
    }

    async fn job(&self, job_id: JobId) -> StoreResult<Option<JobRecord>> {
        load_job(&self.client().await?, job_id).await
    }

    async fn job_view(&self, job_id: JobId) -> StoreResult<Option<JobView>> {
        view_in(&self.client().await?, job_id).await
    }

    async fn claim(
        &self,
        slots: Vec<Slot>,
        free: usize,
        at: Timestamp,
    ) -> StoreResult<Vec<JobRecord>> {
        let node = &self.node;
        let claimed = self
            .write(async |tx, notes| claim_in(tx, notes, node, slots, free, at).await)
            .await?;
        for job in &claimed {
            self.hub.tell(Change::Claimed(job.job_id));
        }
        Ok(claimed)
    }

    async fn set_paused(
        &self,
        agent: Option<AgentName>,
        paused: bool,
        at: Timestamp,
    ) -> StoreResult<bool> {
        self.write(async |tx, notes| {
            let scope = Paused::scope(agent.as_ref());
            let changed = match paused {
                true => {
                    execute(tx, sql::LOCK_CLAIMS_EXCLUSIVE, &[&PAUSE_LOCK]).await?;
                    execute(tx, sql::PAUSE, &[&scope, &at.unix_ms()]).await?
                }
                false => {
                    // Every node's scheduler looks at the queue again.
                    notes.queued();
                    execute(tx, sql::RESUME, &[&scope]).await?
                }
            };
            Ok(changed > 0)
        })
        .await
    }

    async fn paused(&self) -> StoreResult<Paused> {
        paused_in(&self.client().await?).await
    }

    async fn agent_loads(&self) -> StoreResult<std::collections::BTreeMap<AgentName, AgentLoad>> {
        let client = self.client().await?;
        query(&client, sql::AGENT_LOADS, &[])
            .await?
            .iter()
            .map(row::load)
            .collect()
    }

    async fn in_progress(&self) -> StoreResult<Vec<JobRecord>> {
        jobs_from(query(&self.client().await?, sql::IN_PROGRESS, &[]).await?)
    }

    async fn orphans(&self, now: Timestamp) -> StoreResult<Vec<JobRecord>> {
        let rows = query(
            &self.client().await?,
            sql::ORPHANS,
            &[&now.unix_ms(), &self.node.id, &self.node.incarnation],
        )
        .await?;
        jobs_from(rows)
    }

    async fn heartbeat(&self, beat: Beat) -> StoreResult<BeatAnswer> {
        let node = &self.node;
        self.write(async |tx, _| heartbeat_in(tx, node, &beat).await)
            .await
    }

    async fn nodes(&self, since: Timestamp) -> StoreResult<Vec<NodeStatus>> {
        let rows = query(&self.client().await?, sql::NODES, &[&since.unix_ms()]).await?;
        rows.iter().map(row::node).collect()
    }

    async fn lead(&self) -> StoreResult<bool> {
        let mut session = self.leader.lock().await;
        if let Some((client, true)) = session.as_ref() {
            // The lock lives as long as its session: a working session still holds it.
            if client.simple_query(sql::PING).await.is_ok() {
                return Ok(true);
            }
            warn!("lost the lead of the sweeper and pruning");
            *session = None;
        }
        if session
            .as_ref()
            .is_none_or(|(client, _)| client.is_closed())
        {
            let client = connect(&self.config).await?;
            // A leader that is paused (not dead) stops talking: the server ends its session,
            // and with it the lock, after this long, so another node can lead.
            let timeout = self.node.lease.as_millis() * 2;
            client
                .batch_execute(&sql::IDLE_SESSION_TIMEOUT.replace("{ms}", &timeout.to_string()))
                .await?;
            *session = Some((client, false));
        }
        let Some((client, held)) = session.as_mut() else {
            return Ok(false);
        };
        *held = client
            .query_one(sql::TRY_LOCK, &[&LEADER_LOCK])
            .await?
            .try_get(0)?;
        if *held {
            info!("this node now leads the sweeper and pruning");
        }
        Ok(*held)
    }

    fn signals(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    async fn list_jobs(&self, f: JobFilter) -> StoreResult<Vec<JobRecord>> {
        let (filter, mut args) = where_sql(f.conditions(), 1);
        let limit_at = args.len() + 1;
        args.push(Box::new(i64::try_from(f.limit).unwrap_or(i64::MAX)));
        let sql = with_filter(sql::LIST_JOBS, &filter, limit_at);
        let rows = query(&self.client().await?, &sql, &args_ref(&args)).await?;
        jobs_from(rows)
    }

    async fn queued_before(&self, before: Timestamp, limit: usize) -> StoreResult<Vec<JobRecord>> {
        let rows = query(
            &self.client().await?,
            sql::QUEUED_BEFORE,
            &[&before.unix_ms(), &(limit as i64)],
        )
        .await?;
        jobs_from(rows)
    }

    async fn request_cancel(&self, job_id: JobId, attempt: u32, at: Timestamp) -> StoreResult<()> {
        self.write(async |tx, notes| {
            let node_id = fenced(tx, job_id, JobState::InProgress, attempt).await?;
            execute(
                tx,
                sql::REQUEST_CANCEL,
                &[&job_id.to_string(), &at.unix_ms()],
            )
            .await?;
            notes.cancel(job_id, attempt, node_id.as_deref().unwrap_or_default());
            Ok(())
        })
        .await
    }

    async fn requeue(&self, job_id: JobId, attempt: u32, at: Timestamp) -> StoreResult<()> {
        self.write(async |tx, notes| {
            fenced(tx, job_id, JobState::InProgress, attempt).await?;
            let outcome = (JobState::Queued, at);
            record_job_attempt(tx, job_id, outcome, None, None, None).await?;
            execute(tx, sql::REQUEUE, &[&job_id.to_string(), &at.unix_ms()]).await?;
            append_state(tx, notes, job_id, attempt, JobState::Queued, at).await?;
            notes.queued();
            Ok(())
        })
        .await?;
        self.hub.tell(Change::Moved(job_id));
        Ok(())
    }

    async fn rerun(
        &self,
        job_id: JobId,
        from: JobState,
        attempt: u32,
        at: Timestamp,
        schedule_key: Timestamp,
    ) -> StoreResult<()> {
        self.write(async |tx, notes| {
            fenced(tx, job_id, from, attempt).await?;
            execute(
                tx,
                sql::RERUN,
                &[&job_id.to_string(), &at.unix_ms(), &schedule_key.unix_ms()],
            )
            .await?;
            append_state(tx, notes, job_id, attempt + 1, JobState::Queued, at).await?;
            notes.queued();
            Ok(())
        })
        .await?;
        self.hub.tell(Change::Moved(job_id));
        Ok(())
    }

    async fn retry_later(&self, retry: RetryLater) -> StoreResult<()> {
        let job_id = retry.job_id;
        self.write(async |tx, notes| retry_later_in(tx, notes, &retry).await)
            .await?;
        self.hub.tell(Change::Moved(job_id));
        Ok(())
    }

    async fn promote_due(&self, now: Timestamp) -> StoreResult<usize> {
        let promoted = self
            .write(async |tx, notes| promote_in(tx, notes, now).await)
            .await?;
        for job_id in &promoted {
            self.hub.tell(Change::Moved(*job_id));
        }
        Ok(promoted.len())
    }

    async fn next_run_at(&self) -> StoreResult<Option<Timestamp>> {
        let row = query_opt(&self.client().await?, sql::NEXT_RUN_AT, &[]).await?;
        Ok(row.map(|r| r.opt_ts(0)).transpose()?.flatten())
    }

    async fn events_after(
        &self,
        job_id: JobId,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<JobEvent>> {
        events_in(&self.client().await?, job_id, after_seq, limit).await
    }

    async fn changes(&self, asks: Vec<ChangeAsk>, limit: usize) -> StoreResult<Vec<Changes>> {
        let mut client = self.client().await?;
        // One snapshot for the whole batch.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut changes = Vec::with_capacity(asks.len());
        for ask in asks {
            changes.push(Changes {
                events: events_in(&tx, ask.job_id, ask.after_seq, limit).await?,
                view: if ask.view {
                    view_in(&tx, ask.job_id).await?
                } else {
                    None
                },
            });
        }
        tx.commit().await?;
        Ok(changes)
    }

    fn subscribe(&self, job_id: JobId) -> tokio::sync::watch::Receiver<()> {
        self.hub.subscribe(job_id)
    }

    fn tap(&self, tap: Tap) {
        self.hub.set_tap(tap);
    }

    async fn count_jobs(&self, filter: JobFilter) -> StoreResult<Vec<(JobState, u64)>> {
        let (clause, args) = where_sql(
            JobFilter {
                after: None,
                ..filter
            }
            .conditions(),
            1,
        );
        let sql = with_filter(sql::COUNT_JOBS, &clause, 0);
        let rows = query(&self.client().await?, &sql, &args_ref(&args)).await?;
        rows.iter().map(row::state_count).collect()
    }

    async fn overview(&self, since: Timestamp) -> StoreResult<crate::overview::OverviewRows> {
        let client = self.client().await?;
        let since = since.unix_ms();
        let each = async |sql: &str, args: &[Param<'_>]| query(&client, sql, args).await;
        let outbox = each(sql::OUTBOX_STATES, &[])
            .await?
            .iter()
            .map(|r| Ok((r.text(0)?, u64::try_from(r.int(1)?).unwrap_or(0))))
            .collect::<StoreResult<Vec<_>>>()?;
        let (pending_deliveries, dead_letters) = row::outbox_counts(&outbox);
        Ok(crate::overview::OverviewRows {
            counts: each(sql::COUNTS_SINCE, &[&since])
                .await?
                .iter()
                .map(row::agent_state_count)
                .collect::<StoreResult<_>>()?,
            queues: each(sql::QUEUES, &[])
                .await?
                .iter()
                .map(row::queue)
                .collect::<StoreResult<_>>()?,
            running: each(sql::RUNNING_PER_AGENT, &[])
                .await?
                .iter()
                .map(row::queued)
                .collect::<StoreResult<_>>()?,
            pending_deliveries,
            dead_letters,
            finished: each(sql::FINISHED_SINCE, &[&since])
                .await?
                .iter()
                .map(row::finished)
                .collect::<StoreResult<_>>()?,
            attempts: each(sql::ATTEMPTS_SINCE, &[&since])
                .await?
                .iter()
                .map(row::callback_sample)
                .collect::<StoreResult<_>>()?,
        })
    }

    async fn gauges(&self) -> StoreResult<crate::telemetry::StoreGauges> {
        let client = self.client().await?;
        let queued = query(&client, sql::QUEUES, &[])
            .await?
            .iter()
            .map(row::queue)
            .collect::<StoreResult<Vec<_>>>()?;
        let dead: i64 = query_opt(&client, sql::DEAD_LETTERS, &[])
            .await?
            .map_or(Ok(0), |r| r.int(0))?;
        Ok(crate::telemetry::StoreGauges {
            queued,
            dead_letters: u64::try_from(dead).unwrap_or(0),
        })
    }

    async fn check_writable(&self) -> StoreResult<()> {
        let node = &self.node;
        self.write(async |tx, _| {
            execute(
                tx,
                sql::TOUCH_HEARTBEAT,
                &[&node.id, &Timestamp::now().unix_ms()],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn prune(&self, before: Timestamp, limit: usize) -> StoreResult<Vec<Pruned>> {
        let rows = query(
            &self.client().await?,
            sql::PRUNE,
            &[&before.unix_ms(), &(limit as i64)],
        )
        .await?;
        rows.iter().map(row::pruned).collect()
    }

    async fn record_progress(
        &self,
        job_id: JobId,
        attempt: u32,
        progress: Progress,
        at: Timestamp,
    ) -> StoreResult<ProgressSnapshot> {
        let keep = self.events_per_job;
        let snapshot = self
            .write(async |tx, notes| {
                progress_in(tx, notes, job_id, attempt, progress, at, keep).await
            })
            .await?;
        self.hub.tell(Change::Progress(job_id));
        Ok(snapshot)
    }

    async fn finish(&self, finish: Finish) -> StoreResult<DueDelivery> {
        let job_id = finish.job_id;
        let node = &self.node;
        let due = self
            .write(async |tx, notes| finish_in(tx, notes, node, finish).await)
            .await?;
        self.hub.tell(Change::Moved(job_id));
        Ok(due)
    }

    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<DueDelivery>> {
        let rows = query(
            &self.client().await?,
            sql::CLAIM_DUE_DELIVERIES,
            &[
                &now.unix_ms(),
                &lease_until.unix_ms(),
                &(limit as i64),
                &self.node.id,
            ],
        )
        .await?;
        rows.iter().map(|r| row::due(r, r, 7)).collect()
    }

    async fn defer(&self, id: &DeliveryId, until: Timestamp) -> StoreResult<()> {
        execute(
            &self.client().await?,
            sql::DEFER,
            &[&id.as_str(), &until.unix_ms()],
        )
        .await?;
        Ok(())
    }

    async fn deliver_now(&self, id: &DeliveryId, now: Timestamp) -> StoreResult<bool> {
        let changed = execute(
            &self.client().await?,
            sql::DELIVER_NOW,
            &[&id.as_str(), &now.unix_ms()],
        )
        .await?;
        Ok(changed > 0)
    }

    async fn release_leases(&self) -> StoreResult<usize> {
        // Called at start, before this process leased anything: leases in this node's name are
        // its previous process's.
        let n = execute(&self.client().await?, sql::RELEASE_LEASES, &[&self.node.id]).await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn next_delivery_due(&self) -> StoreResult<Option<Timestamp>> {
        let row = query_opt(&self.client().await?, sql::NEXT_DUE, &[]).await?;
        Ok(row.map(|r| r.opt_ts(0)).transpose()?.flatten())
    }

    async fn record_attempt(&self, recorded: AttemptRecorded) -> StoreResult<()> {
        let (id, attempt) = (&recorded.delivery_id, &recorded.attempt);
        let (state, next, delivered) = recorded.outcome.columns(attempt.at);
        let status = attempt.status_code.map(i32::from);
        execute(
            &self.client().await?,
            sql::RECORD_ATTEMPT,
            &[
                &id.as_str(),
                &status,
                &attempt.error,
                &attempt.at.unix_ms(),
                &status,
                &attempt.error,
                &state,
                &next,
                &delivered,
                &i64::try_from(attempt.latency_ms).unwrap_or(i64::MAX),
            ],
        )
        .await?;
        self.hub.tell(Change::Attempt(Box::new(recorded)));
        Ok(())
    }

    async fn list_deliveries(&self, filter: DeliveryFilter) -> StoreResult<Vec<DeliveryStatus>> {
        deliveries_in(&self.client().await?, &filter, None).await
    }

    async fn redrive(&self, f: DeliveryFilter) -> StoreResult<Vec<DeliveryId>> {
        let dead = DeliveryFilter {
            state: Some(DeliveryState::Dead),
            ..f.clone()
        };
        let (filter, mut args) = filter_sql(&dead, None, 2);
        args.insert(0, Box::new(Timestamp::now().unix_ms()));
        let limit_at = args.len() + 1;
        args.push(Box::new(i64::try_from(f.limit).unwrap_or(i64::MAX)));
        let sql = with_filter(sql::REDRIVE, &filter, limit_at);
        let rows = query(&self.client().await?, &sql, &args_ref(&args)).await?;
        rows.iter().map(|r| r.parsed(0)).collect()
    }

    async fn delivery(&self, id: DeliveryId) -> StoreResult<Option<DeliveryStatus>> {
        let filter = DeliveryFilter::one(Some(id));
        Ok(deliveries_in(&self.client().await?, &filter, None)
            .await?
            .into_iter()
            .next())
    }
}
