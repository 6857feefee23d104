//! The stores on real databases (an SQLite file; a fresh PostgreSQL database when
//! `AGENT_SIDECAR_TEST_POSTGRES_URL` names a server): queue order, fencing, history, pruning,
//! leases and leadership. Every case runs on both backends.

use std::time::Duration;

use super::*;
use crate::contract::{CallbackUrls, DeliveryAttempt, DeliveryState, EventData};

const AGING: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// One database, which several nodes can open.
struct TestDb {
    _dir: tempfile::TempDir,
    backend: Backend,
    url: String,
}

impl Backend {
    async fn db(self) -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = match self {
            Backend::Sqlite => dir.path().join("state.db").display().to_string(),
            Backend::Postgres => {
                test_postgres::fresh_database(&test_postgres::test_server(), "t").await
            }
        };
        TestDb {
            _dir: dir,
            backend: self,
            url,
        }
    }

    /// A store of node `a` on a fresh database.
    async fn open(self, events_per_job: usize) -> (TestDb, Arc<dyn Store>) {
        let db = self.db().await;
        let store = db.node("a", events_per_job).await;
        (db, store)
    }
}

impl TestDb {
    async fn node(&self, id: &str, events_per_job: usize) -> Arc<dyn Store> {
        let node = Node::new(id, LEASE);
        match self.backend {
            Backend::Sqlite => Arc::new(
                SqliteStore::open(std::path::Path::new(&self.url), events_per_job, node)
                    .await
                    .unwrap(),
            ),
            Backend::Postgres => Arc::new(
                PgStore::open(&self.url, 4, events_per_job, node)
                    .await
                    .unwrap(),
            ),
        }
    }
}

#[path = "../../tests/support/postgres.rs"]
mod test_postgres;

/// Each case as a test on SQLite, and on PostgreSQL (reported ignored without a server).
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::Backend::Sqlite).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            #[cfg_attr(not(postgres_tests), ignore = "needs AGENT_SIDECAR_TEST_POSTGRES_URL (.ci/run starts a server)")]
            async fn $case() {
                super::$case(super::Backend::Postgres).await;
            })*
        }
    };
}

on_both_stores!(
    higher_priorities_start_first_and_fifo_holds_within_a_priority,
    a_low_job_that_waited_longer_than_the_aging_window_starts_before_newer_high_ones,
    jobs_accepted_in_the_same_millisecond_start_in_acceptance_order,
    a_stale_end_never_overwrites_the_state_another_writer_set,
    a_queued_job_claimed_meanwhile_cannot_be_timed_out_from_the_queue,
    events_replay_in_order_after_any_seq_and_history_keeps_states_and_newest_progress,
    a_requeued_job_keeps_its_place_and_its_next_claim_is_the_next_attempt,
    a_cancel_request_is_fenced_and_remembered,
    pruning_deletes_old_terminal_jobs_but_never_one_whose_completion_is_pending,
    a_lapsed_lease_makes_the_job_an_orphan_and_the_old_attempt_can_write_nothing,
    a_restarted_node_finds_its_previous_claims_orphaned_at_once,
    nodes_claiming_at_once_never_get_the_same_job,
    a_heartbeat_lists_the_node_and_reports_cancels_and_lost_attempts,
    a_claim_takes_only_the_agents_the_node_offers_within_their_slots,
    a_delivery_is_leased_to_one_node_at_a_time,
    a_finished_job_and_its_delivery_read_back_as_written,
    deliver_now_brings_a_retry_forward_but_never_past_a_lease_held_in_flight,
    a_re_run_queues_an_ended_job_once_as_newly_accepted_and_its_claim_is_the_next_attempt,
    a_redriven_delivery_counts_its_age_from_the_redrive,
    job_lists_narrow_by_every_filter_and_page_by_cursor_without_gaps,
    the_overview_reads_counts_queues_running_outbox_and_what_ended,
    a_claim_walks_past_a_key_at_its_limit_and_takes_the_next_key_in_order,
    per_key_limits_hold_across_nodes_claiming_at_once,
    a_paused_agent_is_not_claimed_by_any_node_until_resumed,
    agent_loads_count_queued_and_running_jobs_per_agent,
    a_scheduled_job_waits_for_its_run_at_then_is_queued_once_from_there,
    a_retried_attempt_waits_scheduled_holding_nothing_and_every_attempt_is_recorded,
    a_scheduled_job_can_be_canceled_before_it_is_due,
);

fn new_job(priority: Priority, at_ms: i64) -> NewJob {
    let at = Timestamp::from_unix_ms(at_ms);
    let rank = u32::try_from(priority.rank()).unwrap();
    NewJob {
        request: TriggerRequest {
            job_id: uuid::Uuid::new_v4().to_string().parse().unwrap(),
            user_id: "42".into(),
            agent_name: "summarizer_v2".parse().unwrap(),
            job_name: "ReportCompileJob".parse().unwrap(),
            params: None,
            callback_urls: CallbackUrls {
                progress: "http://127.0.0.1:1/progress".parse().unwrap(),
                completion: "http://127.0.0.1:1/completion".parse().unwrap(),
            },
            priority,
            concurrency_key: None,
            run_at: None,
            delay: None,
        },
        request_sha256: "sha".into(),
        trace_id: "trace".into(),
        at,
        sort_at: at.plus(AGING * rank),
        run_at: None,
    }
}

async fn enqueue(store: &Arc<dyn Store>, job: NewJob) -> JobId {
    match store.enqueue(job).await.unwrap() {
        Enqueued::Created(job) => job.job_id,
        other => panic!("not created: {other:?}"),
    }
}

/// One agent's slot for a claim.
fn slots(agent: &str, free: usize, max_per_key: Option<u32>) -> Vec<Slot> {
    vec![Slot {
        agent: agent.parse().unwrap(),
        free,
        max_per_key,
    }]
}

async fn claim_one(store: &Arc<dyn Store>, at_ms: i64) -> Option<JobRecord> {
    let slots = slots("summarizer_v2", 1, None);
    store
        .claim(slots, 1, Timestamp::from_unix_ms(at_ms))
        .await
        .unwrap()
        .pop()
}

fn finish(job: &JobRecord, state: JobState, at_ms: i64) -> Finish {
    let at = Timestamp::from_unix_ms(at_ms);
    Finish {
        job_id: job.job_id,
        from: job.state,
        attempt: job.attempt,
        state,
        exit_code: None,
        error: None,
        output_index: serde_json::json!({}),
        at,
        completion: NewDelivery {
            id: DeliveryId::generate(),
            url: job.request.callback_urls.completion.clone(),
            body: b"{}".to_vec(),
        },
        lease_until: at,
    }
}

async fn higher_priorities_start_first_and_fifo_holds_within_a_priority(backend: Backend) {
    let (_db, store) = backend.open(100).await;
    let low = enqueue(&store, new_job(Priority::Low, 1_000)).await;
    let normal_1 = enqueue(&store, new_job(Priority::Normal, 1_001)).await;
    let high = enqueue(&store, new_job(Priority::High, 1_002)).await;
    let normal_2 = enqueue(&store, new_job(Priority::Normal, 1_003)).await;
    let mut order = Vec::new();
    while let Some(job) = claim_one(&store, 2_000).await {
        order.push(job.job_id);
    }
    assert_eq!(order, vec![high, normal_1, normal_2, low]);
}

async fn jobs_accepted_in_the_same_millisecond_start_in_acceptance_order(backend: Backend) {
    let (_db, store) = backend.open(100).await;
    // Ids in descending order: a tie broken by job_id would run them backwards.
    let mut ids: Vec<String> = (0..12).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    ids.sort_by(|a, b| b.cmp(a));
    let mut accepted = Vec::new();
    for id in &ids {
        let mut job = new_job(Priority::Normal, 5_000);
        job.request.job_id = id.parse().unwrap();
        accepted.push(enqueue(&store, job).await);
    }
    // One at a time, then the rest in one batch claim: both keep the order.
    let mut order: Vec<JobId> = Vec::new();
    for _ in 0..4 {
        order.push(claim_one(&store, 6_000).await.unwrap().job_id);
    }
    let slots = slots("summarizer_v2", 8, None);
    let batch = store
        .claim(slots, 8, Timestamp::from_unix_ms(6_000))
        .await
        .unwrap();
    order.extend(batch.iter().map(|j| j.job_id));
    assert_eq!(order, accepted);
}

async fn a_low_job_that_waited_longer_than_the_aging_window_starts_before_newer_high_ones(
    backend: Backend,
) {
    let (_db, store) = backend.open(100).await;
    let low = enqueue(&store, new_job(Priority::Low, 0)).await;
    let aging_ms = i64::try_from(AGING.as_millis()).unwrap();
    // Long after the low job's two priority steps, high jobs keep arriving.
    let high = enqueue(&store, new_job(Priority::High, 2 * aging_ms + 1)).await;
    assert_eq!(claim_one(&store, 3 * aging_ms).await.unwrap().job_id, low);
    assert_eq!(claim_one(&store, 3 * aging_ms).await.unwrap().job_id, high);
}

async fn a_stale_end_never_overwrites_the_state_another_writer_set(backend: Backend) {
    let (_db, store) = backend.open(100).await;
    let id = enqueue(&store, new_job(Priority::Normal, 0)).await;
    let seen_by_sweeper = claim_one(&store, 1).await.unwrap();
    // The agent completes while the sweeper is deciding on the view it read.
    store
        .finish(finish(&seen_by_sweeper, JobState::Completed, 2))
        .await
        .unwrap();
    let late = store
        .finish(finish(&seen_by_sweeper, JobState::TimedOut, 3))
        .await;
    assert!(matches!(late, Err(StoreError::Stale { .. })), "{late:?}");
    assert_eq!(
        store.job(id).await.unwrap().unwrap().state,
        JobState::Completed
    );
    let deliveries = store
        .list_deliveries(DeliveryFilter {
            limit: 10,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 1, "exactly one completion");
}

async fn a_queued_job_claimed_meanwhile_cannot_be_timed_out_from_the_queue(backend: Backend) {
    let (_db, store) = backend.open(100).await;
    let id = enqueue(&store, new_job(Priority::Normal, 0)).await;
    let queued = store.job(id).await.unwrap().unwrap();
    claim_one(&store, 1).await.unwrap();
    let late = store.finish(finish(&queued, JobState::TimedOut, 2)).await;
    assert!(matches!(late, Err(StoreError::Stale { .. })), "{late:?}");
    assert_eq!(
        store.job(id).await.unwrap().unwrap().state,
        JobState::InProgress
    );
}

async fn events_replay_in_order_after_any_seq_and_history_keeps_states_and_newest_progress(
    backend: Backend,
) {
    let (_db, store) = backend.open(10).await;
    let id = enqueue(&store, new_job(Priority::Normal, 0)).await;
    let job = claim_one(&store, 1).await.unwrap();
    for i in 0..30 {
        let progress = Progress {
            stage: None,
            message: Some(format!("line {i}")),
            percent: None,
        };
        store
            .record_progress(id, job.attempt, progress, Timestamp::from_unix_ms(2 + i))
            .await
            .unwrap();
    }
    store
        .finish(finish(&job, JobState::Completed, 100))
        .await
        .unwrap();
    let all = store.events_after(id, 0, 1000).await.unwrap();
    let states: Vec<JobState> = all
        .iter()
        .filter_map(|e| match e.data {
            EventData::State { state } => Some(state),
            EventData::Progress { .. } => None,
        })
        .collect();
    assert_eq!(
        states,
        vec![
            JobState::Received,
            JobState::Queued,
            JobState::InProgress,
            JobState::Completed
        ]
    );
    let progress: Vec<u64> = all
        .iter()
        .filter(|e| matches!(e.data, EventData::Progress { .. }))
        .map(|e| e.seq)
        .collect();
    // 3 state events, then progress seq 4..=33: the newest 10 are kept.
    assert_eq!(progress, (24..=33).collect::<Vec<u64>>());
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let last = all.last().unwrap().seq;
    let tail = store.events_after(id, last - 3, 1000).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![last - 2, last - 1, last]
    );
}

async fn a_requeued_job_keeps_its_place_and_its_next_claim_is_the_next_attempt(backend: Backend) {
    let (_db, store) = backend.open(100).await;
    let first = enqueue(&store, new_job(Priority::Normal, 0)).await;
    let job = claim_one(&store, 1).await.unwrap();
    let second = enqueue(&store, new_job(Priority::Normal, 5)).await;
    store
        .requeue(first, job.attempt, Timestamp::from_unix_ms(10))
        .await
        .unwrap();
    let again = claim_one(&store, 11).await.unwrap();
    assert_eq!((again.job_id, again.attempt), (first, 2));
    assert_eq!(claim_one(&store, 12).await.unwrap().job_id, second);
}

async fn a_cancel_request_is_fenced_and_remembered(backend: Backend) {
    let (_db, store) = backend.open(100).await;
    let id = enqueue(&store, new_job(Priority::Normal, 0)).await;
    let stale = store
        .request_cancel(id, 0, Timestamp::from_unix_ms(1))
        .await;
    assert!(matches!(stale, Err(StoreError::Stale { .. })), "{stale:?}");
    let job = claim_one(&store, 2).await.unwrap();
    store
        .request_cancel(id, job.attempt, Timestamp::from_unix_ms(3))
        .await
        .unwrap();
    assert!(store.job(id).await.unwrap().unwrap().cancel_requested);
}

async fn pruning_deletes_old_terminal_jobs_but_never_one_whose_completion_is_pending(
    backend: Backend,
) {
    let (_db, store) = backend.open(100).await;
    let delivered = enqueue(&store, new_job(Priority::Normal, 0)).await;
    let pending = enqueue(&store, new_job(Priority::Normal, 1)).await;
    let running = enqueue(&store, new_job(Priority::Normal, 2)).await;
    let jobs = [
        claim_one(&store, 3).await.unwrap(),
        claim_one(&store, 3).await.unwrap(),
    ];
    claim_one(&store, 3).await.unwrap();
    let mut dues = Vec::new();
    for job in &jobs {
        dues.push(
            store
                .finish(finish(job, JobState::Completed, 10))
                .await
                .unwrap(),
        );
    }
    let done = dues.iter().find(|d| d.job_id == delivered).unwrap();
    let attempt = DeliveryAttempt {
        at: Timestamp::from_unix_ms(11),
        status_code: Some(200),
        error: None,
        latency_ms: 1,
    };
    let recorded = AttemptRecorded {
        job_id: done.job_id,
        delivery_id: done.id.clone(),
        number: 1,
        attempt,
        outcome: AttemptOutcome::Delivered,
    };
    store.record_attempt(recorded).await.unwrap();
    let pruned = store
        .prune(Timestamp::from_unix_ms(1_000), 100)
        .await
        .unwrap();
    assert_eq!(
        pruned.iter().map(|p| p.job_id).collect::<Vec<_>>(),
        vec![delivered]
    );
    assert!(store.job(delivered).await.unwrap().is_none());
    assert!(
        store
            .events_after(delivered, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.job(pending).await.unwrap().is_some());
    assert!(store.job(running).await.unwrap().is_some());
}

fn progress(text: &str) -> Progress {
    Progress {
        stage: None,
        message: Some(text.into()),
        percent: None,
    }
}

async fn a_lapsed_lease_makes_the_job_an_orphan_and_the_old_attempt_can_write_nothing(
    backend: Backend,
) {
    let db = backend.db().await;
    let (a, b) = (db.node("a", 100).await, db.node("b", 100).await);
    let id = enqueue(&a, new_job(Priority::Normal, 0)).await;
    let first = claim_one(&a, 1_000).await.unwrap();
    let within = Timestamp::from_unix_ms(1_000).plus(LEASE);
    assert!(
        b.orphans(within).await.unwrap().is_empty(),
        "a live lease is nobody's orphan"
    );
    let after = within.plus(Duration::from_millis(1));
    let orphans = b.orphans(after).await.unwrap();
    assert_eq!(
        orphans.iter().map(|j| j.job_id).collect::<Vec<_>>(),
        vec![id]
    );
    // Node b takes the job over: requeued, then claimed as attempt 2.
    b.requeue(id, first.attempt, after).await.unwrap();
    let second = claim_one(&b, after.unix_ms()).await.unwrap();
    assert_eq!((second.job_id, second.attempt), (id, 2));
    // Node a comes back: progress, cancel, end and requeue of attempt 1 are all refused.
    let at = after.plus(Duration::from_secs(1));
    let refused = [
        a.record_progress(id, 1, progress("stale"), at).await.err(),
        a.request_cancel(id, 1, at).await.err(),
        a.finish(finish(&first, JobState::Completed, at.unix_ms()))
            .await
            .err(),
        a.requeue(id, 1, at).await.err(),
    ];
    for r in &refused {
        assert!(matches!(r, Some(StoreError::Stale { .. })), "{refused:?}");
    }
    let beat = Beat {
        agents: vec!["summarizer_v2".parse().unwrap()],
        running: vec![(id, 1)],
        max_concurrent: 4,
        at,
    };
    assert_eq!(a.heartbeat(beat).await.unwrap().lost, vec![(id, 1)]);
    let now = b.job(id).await.unwrap().unwrap();
    assert_eq!(
        (now.state, now.attempt, now.last_progress),
        (JobState::InProgress, 2, None)
    );
    assert!(
        b.list_deliveries(DeliveryFilter {
            limit: 10,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap()
        .is_empty()
    );
}

async fn a_restarted_node_finds_its_previous_claims_orphaned_at_once(backend: Backend) {
    let db = backend.db().await;
    let before = db.node("a", 100).await;
    let id = enqueue(&before, new_job(Priority::Normal, 0)).await;
    claim_one(&before, 1_000).await.unwrap();
    drop(before);
    let restarted = db.node("a", 100).await;
    let other = db.node("b", 100).await;
    let now = Timestamp::from_unix_ms(1_001);
    assert_eq!(
        restarted.orphans(now).await.unwrap().len(),
        1,
        "its own earlier claim"
    );
    assert_eq!(restarted.orphans(now).await.unwrap()[0].job_id, id);
    if matches!(backend, Backend::Postgres) {
        assert!(
            other.orphans(now).await.unwrap().is_empty(),
            "another node waits for the lease"
        );
    }
}

async fn nodes_claiming_at_once_never_get_the_same_job(backend: Backend) {
    let db = backend.db().await;
    let nodes = [
        db.node("a", 100).await,
        db.node("b", 100).await,
        db.node("c", 100).await,
    ];
    let mut ids = Vec::new();
    for i in 0..150 {
        ids.push(enqueue(&nodes[0], new_job(Priority::Normal, i)).await);
    }
    let claims = nodes.iter().map(|store| {
        let store = Arc::clone(store);
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let slots = slots("summarizer_v2", 7, None);
                let got = store
                    .claim(slots, 7, Timestamp::from_unix_ms(5_000))
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|j| (j.job_id, j.attempt)));
            }
        })
    });
    let mut all = Vec::new();
    for claim in claims {
        all.extend(claim.await.unwrap());
    }
    assert_eq!(all.len(), 150, "every job claimed once");
    assert!(all.iter().all(|(_, attempt)| *attempt == 1));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 150, "no job claimed twice");
}

async fn a_heartbeat_lists_the_node_and_reports_cancels_and_lost_attempts(backend: Backend) {
    let (_db, store) = backend.open(100).await;
    let id = enqueue(&store, new_job(Priority::Normal, 0)).await;
    let job = claim_one(&store, 1_000).await.unwrap();
    let gone: JobId = uuid::Uuid::new_v4().to_string().parse().unwrap();
    let beat = |at_ms| Beat {
        agents: vec![
            "summarizer_v2".parse().unwrap(),
            "vision_v3".parse().unwrap(),
        ],
        running: vec![(id, job.attempt), (gone, 1)],
        max_concurrent: 4,
        at: Timestamp::from_unix_ms(at_ms),
    };
    let answer = store.heartbeat(beat(2_000)).await.unwrap();
    assert_eq!((answer.lost, answer.cancel), (vec![(gone, 1)], vec![]));
    store
        .request_cancel(id, job.attempt, Timestamp::from_unix_ms(2_500))
        .await
        .unwrap();
    let answer = store.heartbeat(beat(3_000)).await.unwrap();
    assert_eq!(answer.cancel, vec![(id, job.attempt)]);
    // The beat renewed the lease: not an orphan until a lease after the last beat.
    let renewed = Timestamp::from_unix_ms(3_000).plus(LEASE);
    assert!(store.orphans(renewed).await.unwrap().is_empty());
    let nodes = store.nodes(Timestamp::from_unix_ms(2_999)).await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        (
            nodes[0].node_id.as_str(),
            nodes[0].running,
            nodes[0].max_concurrent
        ),
        ("a", 2, 4)
    );
    assert_eq!(nodes[0].agents.len(), 2);
    assert_eq!(nodes[0].last_heartbeat, Timestamp::from_unix_ms(3_000));
    assert!(
        store
            .nodes(Timestamp::from_unix_ms(3_001))
            .await
            .unwrap()
            .is_empty(),
        "not live since"
    );
}

async fn a_claim_takes_only_the_agents_the_node_offers_within_their_slots(backend: Backend) {
    let (_db, store) = backend.open(100).await;
    let mut vision = new_job(Priority::High, 0);
    vision.request.agent_name = "vision_v3".parse().unwrap();
    let vision = enqueue(&store, vision).await;
    for i in 1..=3 {
        enqueue(&store, new_job(Priority::Normal, i)).await;
    }
    let slots = slots("summarizer_v2", 2, None);
    let got = store
        .claim(slots, 10, Timestamp::from_unix_ms(10))
        .await
        .unwrap();
    assert_eq!(got.len(), 2, "two slots for summarizer_v2");
    assert!(
        got.iter().all(|j| j.job_id != vision),
        "vision_v3 is not offered here"
    );
    assert_eq!(
        store.job(vision).await.unwrap().unwrap().state,
        JobState::Queued
    );
}

async fn a_delivery_is_leased_to_one_node_at_a_time(backend: Backend) {
    let db = backend.db().await;
    let (a, b) = (db.node("a", 100).await, db.node("b", 100).await);
    enqueue(&a, new_job(Priority::Normal, 0)).await;
    let job = claim_one(&a, 1).await.unwrap();
    a.finish(finish(&job, JobState::Completed, 2))
        .await
        .unwrap();
    let (now, lease) = (Timestamp::from_unix_ms(3), Timestamp::from_unix_ms(10_000));
    let (first, second) = tokio::join!(
        a.claim_due_deliveries(now, lease, 10),
        b.claim_due_deliveries(now, lease, 10)
    );
    assert_eq!(
        first.unwrap().len() + second.unwrap().len(),
        1,
        "one lease for one delivery"
    );
    let later = Timestamp::from_unix_ms(10_001);
    let again = b
        .claim_due_deliveries(later, later.plus(LEASE), 10)
        .await
        .unwrap();
    assert_eq!(
        again.len(),
        1,
        "a lapsed lease is taken again, with the same id"
    );
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs AGENT_SIDECAR_TEST_POSTGRES_URL (.ci/run starts a server)"
)]
async fn postgres_one_node_leads_and_another_takes_over_when_the_leader_goes() {
    let db = Backend::Postgres.db().await;
    let (a, b) = (db.node("a", 100).await, db.node("b", 100).await);
    assert!(a.lead().await.unwrap());
    assert!(!b.lead().await.unwrap(), "one leader at a time");
    assert!(a.lead().await.unwrap(), "the leader keeps the lead");
    drop(a);
    let mut took_over = false;
    for _ in 0..100 {
        if b.lead().await.unwrap() {
            took_over = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        took_over,
        "the lead passes on when its holder's session ends"
    );
}

/// The row mapping both stores share (`store::row`): every column of a job, its events, its
/// delivery and the delivery's attempts reads back as written.
async fn a_finished_job_and_its_delivery_read_back_as_written(backend: Backend) {
    // Arrange: a job that ran, failed with an exit code, and whose completion failed once.
    let (_db, store) = backend.open(1000).await;
    let job_id = enqueue(&store, new_job(Priority::Low, 1)).await;
    let job = claim_one(&store, 2).await.unwrap();
    store
        .record_progress(job_id, 1, progress("half"), Timestamp::from_unix_ms(3))
        .await
        .unwrap();
    let error = JobError {
        reason: crate::contract::ErrorReason::ExitCode,
        message: "exited 3".into(),
        exit_code: Some(3),
    };
    let mut end = finish(&job, JobState::Failed, 4);
    end.exit_code = Some(3);
    end.error = Some(error.clone());
    end.output_index = serde_json::json!({"artifacts": []});
    let due = store.finish(end).await.unwrap();
    let attempt = DeliveryAttempt {
        at: Timestamp::from_unix_ms(5),
        status_code: Some(503),
        error: Some("unavailable".into()),
        latency_ms: 7,
    };
    let retry_at = Timestamp::from_unix_ms(9);
    let recorded = AttemptRecorded {
        job_id,
        delivery_id: due.id.clone(),
        number: 1,
        attempt: attempt.clone(),
        outcome: AttemptOutcome::RetryAt(retry_at),
    };
    store.record_attempt(recorded).await.unwrap();

    // Act
    let view = store.job_view(job_id).await.unwrap().unwrap();
    let events = store.events_after(job_id, 0, 100).await.unwrap();
    let listed = store.list_jobs(JobFilter {
        state: Some(JobState::Failed),
        limit: 10,
        ..JobFilter::default()
    });
    let listed = listed.await.unwrap();
    let gauges = store.gauges().await.unwrap();

    // Assert
    let j = &view.job;
    assert_eq!(
        (j.job_id, j.state, j.attempt),
        (job_id, JobState::Failed, 1)
    );
    assert_eq!(j.priority, Priority::Low);
    assert_eq!((j.user_id.as_str(), j.trace_id.as_str()), ("42", "trace"));
    assert_eq!(j.agent_name.as_str(), "summarizer_v2");
    assert_eq!(j.job_name.as_str(), "ReportCompileJob");
    assert_eq!(j.request_sha256, "sha");
    assert_eq!(j.request.job_id, job_id);
    assert_eq!(j.created_at, Timestamp::from_unix_ms(1));
    assert_eq!(j.queued_at, Timestamp::from_unix_ms(1));
    assert_eq!(j.started_at, Some(Timestamp::from_unix_ms(2)));
    assert_eq!(j.finished_at, Some(Timestamp::from_unix_ms(4)));
    assert_eq!((j.exit_code, j.error.as_ref()), (Some(3), Some(&error)));
    assert_eq!(j.output_index, Some(serde_json::json!({"artifacts": []})));
    assert_eq!(j.last_progress.as_ref().map(|p| p.seq), Some(4));
    assert!(!j.cancel_requested);
    let states: Vec<_> = view
        .transitions
        .iter()
        .map(|t| (t.state, t.attempt))
        .collect();
    assert_eq!(
        states,
        [
            (JobState::Received, 0),
            (JobState::Queued, 0),
            (JobState::InProgress, 1),
            (JobState::Failed, 1)
        ]
    );
    assert_eq!(view.transitions[3].at, Timestamp::from_unix_ms(4));
    let d = view.delivery.unwrap();
    assert_eq!((d.delivery_id.clone(), d.job_id), (due.id.clone(), job_id));
    assert_eq!(d.destination, "http://127.0.0.1:1");
    assert_eq!((d.state, d.attempts), (DeliveryState::Pending, 1));
    assert_eq!(d.created_at, Timestamp::from_unix_ms(4));
    assert_eq!(d.last_status_code, Some(503));
    assert_eq!(d.last_error.as_deref(), Some("unavailable"));
    assert_eq!((d.next_attempt_at, d.delivered_at), (Some(retry_at), None));
    assert_eq!(d.history, [attempt]);
    assert_eq!(Some(d), store.delivery(due.id.clone()).await.unwrap());
    let seqs: Vec<_> = events.iter().map(|e| (e.seq, e.attempt)).collect();
    assert_eq!(seqs, [(1, 0), (2, 0), (3, 1), (4, 1), (5, 1)]);
    assert!(matches!(&events[3].data, EventData::Progress { message: Some(m), .. } if m == "half"));
    assert_eq!(
        listed.iter().map(|j| j.job_id).collect::<Vec<_>>(),
        [job_id]
    );
    assert_eq!((gauges.queued.len(), gauges.dead_letters), (0, 0));
}

/// Issue 21: `POST /deliveries/{id}/deliver` moves a pending delivery's next attempt to now,
/// while an attempt in flight keeps its lease (one attempt at a time), and only pending ones.
async fn deliver_now_brings_a_retry_forward_but_never_past_a_lease_held_in_flight(
    backend: Backend,
) {
    // Arrange: a completion whose first attempt (leased to its writer until 1000) is in flight.
    let db = backend.db().await;
    let (a, b) = (db.node("a", 100).await, db.node("b", 100).await);
    enqueue(&a, new_job(Priority::Normal, 0)).await;
    let job = claim_one(&a, 1).await.unwrap();
    let mut end = finish(&job, JobState::Failed, 2);
    end.lease_until = Timestamp::from_unix_ms(1_000);
    let due = a.finish(end).await.unwrap();
    let at = |ms| Timestamp::from_unix_ms(ms);

    // Act + Assert: asked to deliver now while the attempt is in flight, no one else claims it.
    assert!(
        b.deliver_now(&due.id, at(3)).await.unwrap(),
        "a pending one is brought forward"
    );
    assert!(
        b.claim_due_deliveries(at(4), at(5_000), 10)
            .await
            .unwrap()
            .is_empty(),
        "the lease of the attempt in flight holds"
    );

    // The attempt fails and schedules its retry an hour later: nothing is due before then.
    let recorded = |outcome| AttemptRecorded {
        job_id: job.job_id,
        delivery_id: due.id.clone(),
        number: 1,
        attempt: DeliveryAttempt {
            at: at(5),
            status_code: Some(503),
            error: None,
            latency_ms: 1,
        },
        outcome,
    };
    a.record_attempt(recorded(AttemptOutcome::RetryAt(at(3_600_000))))
        .await
        .unwrap();
    assert!(
        b.claim_due_deliveries(at(6), at(5_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(b.deliver_now(&due.id, at(7)).await.unwrap());
    assert_eq!(b.next_delivery_due().await.unwrap(), Some(at(7)));
    let claimed = b.claim_due_deliveries(at(7), at(5_000), 10).await.unwrap();
    assert_eq!(claimed.len(), 1, "due at once after deliver");
    assert_eq!(claimed[0].id, due.id, "with its id");
    assert!(
        a.claim_due_deliveries(at(8), at(5_000), 10)
            .await
            .unwrap()
            .is_empty(),
        "and leased to one node"
    );
    // A later deliver never pushes it back.
    b.record_attempt(recorded(AttemptOutcome::RetryAt(at(9))))
        .await
        .unwrap();
    assert!(b.deliver_now(&due.id, at(20)).await.unwrap());
    assert_eq!(b.next_delivery_due().await.unwrap(), Some(at(9)));

    // Only pending deliveries: a delivered one and an unknown id are left alone.
    b.record_attempt(recorded(AttemptOutcome::Delivered))
        .await
        .unwrap();
    assert!(!b.deliver_now(&due.id, at(30)).await.unwrap());
    assert!(
        !b.deliver_now(&DeliveryId::generate(), at(30))
            .await
            .unwrap()
    );
}

/// Issue 21: a re-run is a compare-and-set from the ended state and attempt to `queued`; the
/// job goes behind jobs accepted before the re-run, and its next claim is attempt 2.
async fn a_re_run_queues_an_ended_job_once_as_newly_accepted_and_its_claim_is_the_next_attempt(
    backend: Backend,
) {
    // Arrange: job A failed; job B accepted after A ended.
    let (_db, store) = backend.open(100).await;
    let a = enqueue(&store, new_job(Priority::Normal, 1)).await;
    let job = claim_one(&store, 2).await.unwrap();
    store
        .finish(finish(&job, JobState::Failed, 3))
        .await
        .unwrap();
    let b = enqueue(&store, new_job(Priority::Normal, 4)).await;
    // Keyed as the API keys it: accepted now, at its priority (normal: one aging step).
    let (at, key) = (
        Timestamp::from_unix_ms(5),
        Timestamp::from_unix_ms(5).plus(AGING),
    );

    // Act
    store.rerun(a, JobState::Failed, 1, at, key).await.unwrap();

    // Assert: queued, its end cleared; a second re-run of the same end is stale.
    let queued = store.job(a).await.unwrap().unwrap();
    assert_eq!(queued.state, JobState::Queued);
    assert_eq!(queued.finished_at, None);
    assert_eq!(queued.error, None);
    let again = store.rerun(a, JobState::Failed, 1, at, key).await;
    assert!(matches!(again, Err(StoreError::Stale { .. })), "{again:?}");
    let wrong = store.rerun(b, JobState::Failed, 0, at, key).await;
    assert!(
        matches!(wrong, Err(StoreError::Stale { .. })),
        "a queued job: {wrong:?}"
    );
    assert_eq!(
        claim_one(&store, 6).await.unwrap().job_id,
        b,
        "B was accepted first"
    );
    let next = claim_one(&store, 7).await.unwrap();
    assert_eq!((next.job_id, next.attempt), (a, 2), "the next attempt");
    let view = store.job_view(a).await.unwrap().unwrap();
    let states: Vec<JobState> = view.transitions.iter().map(|t| t.state).collect();
    assert_eq!(
        states.iter().filter(|s| **s == JobState::Queued).count(),
        2,
        "{states:?}"
    );
}

async fn a_redriven_delivery_counts_its_age_from_the_redrive(backend: Backend) {
    // Arrange: a completion written at 4 ms and dead-lettered at 5 ms.
    let (_db, store) = backend.open(1000).await;
    enqueue(&store, new_job(Priority::Normal, 1)).await;
    let job = claim_one(&store, 2).await.unwrap();
    let due = store
        .finish(finish(&job, JobState::Completed, 4))
        .await
        .unwrap();
    let dead = AttemptRecorded {
        job_id: job.job_id,
        delivery_id: due.id.clone(),
        number: 1,
        attempt: DeliveryAttempt {
            at: Timestamp::from_unix_ms(5),
            status_code: Some(400),
            error: Some("bad request".into()),
            latency_ms: 1,
        },
        outcome: AttemptOutcome::Dead,
    };
    store.record_attempt(dead).await.unwrap();

    // Act
    let before = Timestamp::now();
    let redriven = store
        .redrive(DeliveryFilter {
            id: Some(due.id.clone()),
            state: Some(DeliveryState::Dead),
            limit: 10,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    let later = Timestamp::now().plus(std::time::Duration::from_secs(1));
    let claimed = store
        .claim_due_deliveries(later, later.plus(std::time::Duration::from_secs(60)), 10)
        .await
        .unwrap();

    // Assert: the age limit starts again at the redrive, not at the delivery's creation.
    assert_eq!(redriven, vec![due.id.clone()]);
    let again = claimed
        .iter()
        .find(|d| d.id == due.id)
        .expect("redriven delivery is due");
    assert!(
        again.age_from.unix_ms() >= before.unix_ms(),
        "age counted from {} ms, redriven at {} ms",
        again.age_from.unix_ms(),
        before.unix_ms()
    );
}

fn job_of(user: &str, job_name: &str, priority: Priority, at_ms: i64) -> NewJob {
    let mut job = new_job(priority, at_ms);
    job.request.user_id = user.into();
    job.request.job_name = job_name.parse().unwrap();
    job
}

async fn ids(store: &Arc<dyn Store>, filter: JobFilter) -> Vec<JobId> {
    let jobs = store.list_jobs(filter).await.unwrap();
    jobs.iter().map(|j| j.job_id).collect()
}

/// Issue 20: the jobs list's filters each narrow it, and keyset pages cover every job once,
/// newest first, even when jobs share a millisecond.
async fn job_lists_narrow_by_every_filter_and_page_by_cursor_without_gaps(backend: Backend) {
    // Arrange: seven jobs over two users, two handlers and two priorities; three share a ms.
    let (_db, store) = backend.open(1000).await;
    let mut accepted = Vec::new();
    for (i, at) in [10, 20, 20, 20, 30, 40, 50].into_iter().enumerate() {
        let user = if i % 2 == 0 { "u-even" } else { "u-odd" };
        let name = if i < 4 { "ReportJob" } else { "DigestJob" };
        let priority = if i == 6 {
            Priority::High
        } else {
            Priority::Normal
        };
        accepted.push(enqueue(&store, job_of(user, name, priority, at)).await);
    }
    let claimed = claim_one(&store, 60).await.unwrap();
    let all = |limit| JobFilter {
        limit,
        ..JobFilter::default()
    };

    // Act: page through two at a time.
    let mut paged = Vec::new();
    let mut filter = all(2);
    loop {
        let page = store.list_jobs(filter.clone()).await.unwrap();
        let Some(last) = page.last() else { break };
        filter.after = Some(JobCursor::after(last));
        paged.extend(page.iter().map(|j| j.job_id));
    }

    // Assert
    let newest_first = ids(&store, all(100)).await;
    assert_eq!(newest_first.len(), 7);
    assert_eq!(paged, newest_first, "pages cover every job once, in order");
    let narrowed = |f: JobFilter| ids(&store, JobFilter { limit: 100, ..f });
    let by_user = narrowed(JobFilter {
        user_id: Some("u-odd".into()),
        ..JobFilter::default()
    })
    .await;
    assert_eq!(by_user.len(), 3);
    let by_name = narrowed(JobFilter {
        job_name: Some("DigestJob".parse().unwrap()),
        ..JobFilter::default()
    })
    .await;
    assert_eq!(by_name.len(), 3);
    let high = narrowed(JobFilter {
        priority: Some(Priority::High),
        ..JobFilter::default()
    })
    .await;
    assert_eq!(high, [accepted[6]]);
    let on_node = narrowed(JobFilter {
        node: Some("a".into()),
        ..JobFilter::default()
    })
    .await;
    assert_eq!(on_node, [claimed.job_id]);
    let window = narrowed(JobFilter {
        since: Some(Timestamp::from_unix_ms(20)),
        until: Some(Timestamp::from_unix_ms(40)),
        ..JobFilter::default()
    })
    .await;
    assert_eq!(window.len(), 4, "20 ≤ created_at < 40");
    let prefix = accepted[3].to_string()[..8].to_owned();
    let by_prefix = narrowed(JobFilter {
        id_prefix: Some(prefix),
        ..JobFilter::default()
    })
    .await;
    assert_eq!(by_prefix, [accepted[3]]);
    let counts = store
        .count_jobs(JobFilter {
            user_id: Some("u-even".into()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by_key(|(s, _)| s.as_str());
    let expected_running = u64::from(claimed.request.user_id == "u-even");
    let mut expected = vec![(JobState::Queued, 4 - expected_running)];
    if expected_running == 1 {
        expected.push((JobState::InProgress, 1));
    }
    expected.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(counts, expected);
}

/// Issue 20: what the overview is built from reads back from the store as it stands.
async fn the_overview_reads_counts_queues_running_outbox_and_what_ended(backend: Backend) {
    // Arrange: one job ended with a failed callback attempt, one running, one queued.
    let (_db, store) = backend.open(1000).await;
    let ended = enqueue(&store, new_job(Priority::Normal, 100)).await;
    enqueue(&store, new_job(Priority::Normal, 200)).await;
    enqueue(&store, new_job(Priority::Normal, 300)).await;
    let job = claim_one(&store, 400).await.unwrap();
    assert_eq!(job.job_id, ended);
    let due = store
        .finish(finish(&job, JobState::Completed, 900))
        .await
        .unwrap();
    claim_one(&store, 950).await.unwrap();
    store
        .record_attempt(AttemptRecorded {
            job_id: ended,
            delivery_id: due.id.clone(),
            number: 1,
            attempt: DeliveryAttempt {
                at: Timestamp::from_unix_ms(1000),
                status_code: Some(503),
                error: None,
                latency_ms: 42,
            },
            outcome: AttemptOutcome::Dead,
        })
        .await
        .unwrap();

    // Act
    let rows = store.overview(Timestamp::from_unix_ms(50)).await.unwrap();
    let later = store.overview(Timestamp::from_unix_ms(5000)).await.unwrap();

    // Assert
    let agent: AgentName = "summarizer_v2".parse().unwrap();
    let mut counts = rows.counts.clone();
    counts.sort_by_key(|(_, s, _)| s.as_str());
    assert_eq!(
        counts,
        [
            (agent.clone(), JobState::Completed, 1),
            (agent.clone(), JobState::InProgress, 1),
            (agent.clone(), JobState::Queued, 1),
        ]
    );
    assert_eq!(
        rows.queues,
        [(agent.clone(), 1, Timestamp::from_unix_ms(300))]
    );
    assert_eq!(rows.running, [(agent.clone(), 1)]);
    assert_eq!((rows.pending_deliveries, rows.dead_letters), (0, 1));
    assert_eq!(rows.finished.len(), 1);
    let f = rows.finished[0];
    assert_eq!(
        (f.state, f.finished_at),
        (JobState::Completed, Timestamp::from_unix_ms(900))
    );
    assert_eq!(
        (f.started_at, f.queued_at),
        (
            Some(Timestamp::from_unix_ms(400)),
            Timestamp::from_unix_ms(100)
        )
    );
    assert_eq!(rows.attempts.len(), 1);
    assert_eq!(
        (rows.attempts[0].latency_ms, rows.attempts[0].ok),
        (42, false)
    );
    assert!(later.counts.is_empty() && later.finished.is_empty() && later.attempts.is_empty());
    assert_eq!(
        later.queues.len(),
        1,
        "the queue is now, whatever the window"
    );
}

fn keyed(key: &str, at_ms: i64) -> NewJob {
    let mut job = new_job(Priority::Normal, at_ms);
    job.request.concurrency_key = Some(key.into());
    job
}

async fn a_claim_walks_past_a_key_at_its_limit_and_takes_the_next_key_in_order(backend: Backend) {
    let (_db, store) = backend.open(100).await;
    let a1 = enqueue(&store, keyed("a", 1)).await;
    let a2 = enqueue(&store, keyed("a", 2)).await;
    let a3 = enqueue(&store, keyed("a", 3)).await;
    let b1 = enqueue(&store, keyed("b", 4)).await;
    let none = enqueue(&store, new_job(Priority::Normal, 5)).await;
    let at = Timestamp::from_unix_ms(10);
    // One batch: a1, then a2 and a3 walked past (key a at 1), then b1 and the unkeyed job.
    let got = store
        .claim(slots("summarizer_v2", 3, Some(1)), 3, at)
        .await
        .unwrap();
    let ids: Vec<JobId> = got.iter().map(|j| j.job_id).collect();
    assert_eq!(ids, vec![a1, b1, none]);
    // Key a is at its limit until a1 ends; then a2 (the older) comes next, not a3.
    assert!(
        store
            .claim(slots("summarizer_v2", 3, Some(1)), 3, at)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .finish(finish(&got[0], JobState::Completed, 20))
        .await
        .unwrap();
    let next = store
        .claim(slots("summarizer_v2", 3, Some(1)), 3, at)
        .await
        .unwrap();
    assert_eq!(next.iter().map(|j| j.job_id).collect::<Vec<_>>(), vec![a2]);
    // Without a per-key limit the key means nothing.
    let rest = store
        .claim(slots("summarizer_v2", 3, None), 3, at)
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|j| j.job_id).collect::<Vec<_>>(), vec![a3]);
}

async fn per_key_limits_hold_across_nodes_claiming_at_once(backend: Backend) {
    let db = backend.db().await;
    let nodes = [db.node("a", 100).await, db.node("b", 100).await];
    for i in 0..20 {
        enqueue(&nodes[0], keyed(if i % 2 == 0 { "x" } else { "y" }, i)).await;
    }
    let claims = nodes.iter().map(|store| {
        let store = Arc::clone(store);
        tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..5 {
                let got = store
                    .claim(
                        slots("summarizer_v2", 4, Some(2)),
                        4,
                        Timestamp::from_unix_ms(100),
                    )
                    .await
                    .unwrap();
                mine.extend(got);
            }
            mine
        })
    });
    let mut all = Vec::new();
    for claim in claims {
        all.extend(claim.await.unwrap());
    }
    let per_key = |k: &str| {
        all.iter()
            .filter(|j| j.request.concurrency_key.as_deref() == Some(k))
            .count()
    };
    assert_eq!(
        (per_key("x"), per_key("y")),
        (2, 2),
        "two of each key, fleet-wide"
    );
    let running = nodes[0].in_progress().await.unwrap();
    assert_eq!(running.len(), 4);
}

async fn a_paused_agent_is_not_claimed_by_any_node_until_resumed(backend: Backend) {
    let db = backend.db().await;
    let (a, b) = (db.node("a", 100).await, db.node("b", 100).await);
    let id = enqueue(&a, new_job(Priority::Normal, 1)).await;
    let agent: AgentName = "summarizer_v2".parse().unwrap();
    let at = Timestamp::from_unix_ms(5);
    assert!(a.set_paused(Some(agent.clone()), true, at).await.unwrap());
    assert!(
        !a.set_paused(Some(agent.clone()), true, at).await.unwrap(),
        "already paused"
    );
    let paused = b.paused().await.unwrap();
    assert!(paused.holds(&agent) && !paused.all);
    assert!(claim_one(&b, 10).await.is_none(), "paused on every node");
    // Resuming the agent while every agent is paused still claims nothing.
    a.set_paused(None, true, at).await.unwrap();
    b.set_paused(Some(agent.clone()), false, at).await.unwrap();
    assert!(
        claim_one(&a, 10).await.is_none(),
        "the sidecar-wide pause holds"
    );
    let mut signals = a.signals();
    b.set_paused(None, false, at).await.unwrap();
    assert_eq!(b.paused().await.unwrap(), Paused::default());
    if matches!(backend, Backend::Postgres) {
        // The resume wakes the other nodes' schedulers.
        let signal = tokio::time::timeout(Duration::from_secs(10), signals.recv()).await;
        assert_eq!(signal.unwrap().unwrap(), Signal::Queued);
    }
    assert_eq!(claim_one(&a, 10).await.unwrap().job_id, id);
}

async fn agent_loads_count_queued_and_running_jobs_per_agent(backend: Backend) {
    let (_db, store) = backend.open(100).await;
    for i in 0..3 {
        enqueue(&store, new_job(Priority::Normal, i)).await;
    }
    let mut vision = new_job(Priority::Normal, 4);
    vision.request.agent_name = "vision_v3".parse().unwrap();
    enqueue(&store, vision).await;
    claim_one(&store, 10).await.unwrap();
    let loads = store.agent_loads().await.unwrap();
    let load = |a: &str| loads.get(&a.parse::<AgentName>().unwrap()).copied();
    assert_eq!(
        load("summarizer_v2"),
        Some(AgentLoad {
            queued: 2,
            running: 1
        })
    );
    assert_eq!(
        load("vision_v3"),
        Some(AgentLoad {
            queued: 1,
            running: 0
        })
    );
}

fn scheduled_job(at_ms: i64, run_at_ms: i64) -> NewJob {
    let run_at = Timestamp::from_unix_ms(run_at_ms);
    NewJob {
        run_at: Some(run_at),
        sort_at: run_at.plus(AGING),
        ..new_job(Priority::Normal, at_ms)
    }
}

async fn a_scheduled_job_waits_for_its_run_at_then_is_queued_once_from_there(backend: Backend) {
    // Arrange: a job accepted at 1 to run at 1000; another node shares the store.
    let (db, store) = backend.open(100).await;
    let other = db.node("b", 100).await;
    let id = enqueue(&store, scheduled_job(1, 1000)).await;

    // Assert: scheduled, claimable by no one, listed, its time known to every node.
    let job = store.job(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Scheduled);
    assert_eq!(job.run_at, Some(Timestamp::from_unix_ms(1000)));
    assert!(claim_one(&store, 2).await.is_none());
    let listed = store
        .list_jobs(JobFilter {
            state: Some(JobState::Scheduled),
            limit: 10,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|j| j.job_id).collect::<Vec<_>>(), [id]);
    assert_eq!(
        other.next_run_at().await.unwrap(),
        Some(Timestamp::from_unix_ms(1000))
    );

    // Act + Assert: not due before its time; promoted once at it, by whichever node.
    assert_eq!(
        store
            .promote_due(Timestamp::from_unix_ms(999))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        other
            .promote_due(Timestamp::from_unix_ms(1000))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .promote_due(Timestamp::from_unix_ms(1001))
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.next_run_at().await.unwrap(), None);
    // Its queue age counts from its run_at, not from its acceptance.
    let before = |ms| store.queued_before(Timestamp::from_unix_ms(ms), 10);
    assert!(before(1000).await.unwrap().is_empty());
    assert_eq!(before(1001).await.unwrap()[0].job_id, id);
    let claimed = claim_one(&store, 1002).await.unwrap();
    assert_eq!((claimed.job_id, claimed.attempt), (id, 1));
    let view = store.job_view(id).await.unwrap().unwrap();
    let states: Vec<JobState> = view.transitions.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [
            JobState::Received,
            JobState::Scheduled,
            JobState::Queued,
            JobState::InProgress
        ]
    );
}

async fn a_retried_attempt_waits_scheduled_holding_nothing_and_every_attempt_is_recorded(
    backend: Backend,
) {
    // Arrange: attempt 1 of a job is running.
    let (_db, store) = backend.open(100).await;
    let id = enqueue(&store, new_job(Priority::Normal, 1)).await;
    let job = claim_one(&store, 2).await.unwrap();
    let error = JobError {
        reason: crate::contract::ErrorReason::ExitCode,
        message: "agent exited with code 75".into(),
        exit_code: Some(75),
    };
    let retry = RetryLater {
        job_id: id,
        attempt: 1,
        state: JobState::Failed,
        exit_code: Some(75),
        error: Some(error.clone()),
        at: Timestamp::from_unix_ms(10),
        run_at: Timestamp::from_unix_ms(500),
        schedule_key: Timestamp::from_unix_ms(500).plus(AGING),
    };

    // Act
    store.retry_later(retry.clone()).await.unwrap();

    // Assert: scheduled and unleased; the same end twice is stale; nothing to claim until due.
    let waiting = store.job(id).await.unwrap().unwrap();
    assert_eq!(waiting.state, JobState::Scheduled);
    assert_eq!((waiting.attempt, waiting.started_at), (1, None));
    assert!(store.in_progress().await.unwrap().is_empty());
    let again = store.retry_later(retry).await;
    assert!(matches!(again, Err(StoreError::Stale { .. })), "{again:?}");
    assert!(claim_one(&store, 20).await.is_none());
    assert_eq!(
        store
            .promote_due(Timestamp::from_unix_ms(500))
            .await
            .unwrap(),
        1
    );
    let second = claim_one(&store, 501).await.unwrap();
    assert_eq!((second.job_id, second.attempt), (job.job_id, 2));
    store
        .finish(finish(&second, JobState::Completed, 600))
        .await
        .unwrap();
    let view = store.job_view(id).await.unwrap().unwrap();
    let attempts: Vec<_> = view
        .attempts
        .iter()
        .map(|a| {
            (
                a.attempt,
                a.state,
                a.exit_code,
                a.retry_at.map(Timestamp::unix_ms),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [
            (1, JobState::Failed, Some(75), Some(500)),
            (2, JobState::Completed, None, None)
        ]
    );
    assert_eq!(view.attempts[0].error, Some(error));
    assert_eq!(view.attempts[0].started_at.map(Timestamp::unix_ms), Some(2));
    assert_eq!(
        view.attempts[1].started_at.map(Timestamp::unix_ms),
        Some(501)
    );
    let scheduled = view
        .transitions
        .iter()
        .find(|t| t.state == JobState::Scheduled)
        .unwrap();
    assert_eq!(scheduled.attempt, 1);
}

async fn a_scheduled_job_can_be_canceled_before_it_is_due(backend: Backend) {
    // Arrange
    let (_db, store) = backend.open(100).await;
    let id = enqueue(&store, scheduled_job(1, 10_000)).await;
    let job = store.job(id).await.unwrap().unwrap();

    // Act
    store
        .finish(finish(&job, JobState::Canceled, 5))
        .await
        .unwrap();

    // Assert: ended, never promoted, no attempt recorded (none ran).
    let ended = store.job_view(id).await.unwrap().unwrap();
    assert_eq!(ended.job.state, JobState::Canceled);
    assert!(ended.attempts.is_empty());
    assert_eq!(
        store
            .promote_due(Timestamp::from_unix_ms(20_000))
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.next_run_at().await.unwrap(), None);
}
