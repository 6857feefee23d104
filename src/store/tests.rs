//! The SQLite store on real files: queue order, fencing, history and pruning.

use std::time::Duration;

use super::*;
use crate::contract::{CallbackUrls, EventData};

const AGING: Duration = Duration::from_secs(60);

async fn store(events_per_job: usize) -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("state.db"), events_per_job)
        .await
        .unwrap();
    (dir, store)
}

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
        },
        request_sha256: "sha".into(),
        trace_id: "trace".into(),
        at,
        sort_at: at.plus(AGING * rank),
    }
}

async fn enqueue(store: &SqliteStore, job: NewJob) -> JobId {
    match store.enqueue(job).await.unwrap() {
        Enqueued::Created(job) => job.job_id,
        other => panic!("not created: {other:?}"),
    }
}

async fn claim_one(store: &SqliteStore, at_ms: i64) -> Option<JobRecord> {
    let slots = vec![("summarizer_v2".parse().unwrap(), 1)];
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

#[tokio::test]
async fn higher_priorities_start_first_and_fifo_holds_within_a_priority() {
    let (_dir, store) = store(100).await;
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

#[tokio::test]
async fn a_low_job_that_waited_longer_than_the_aging_window_starts_before_newer_high_ones() {
    let (_dir, store) = store(100).await;
    let low = enqueue(&store, new_job(Priority::Low, 0)).await;
    let aging_ms = i64::try_from(AGING.as_millis()).unwrap();
    // Long after the low job's two priority steps, high jobs keep arriving.
    let high = enqueue(&store, new_job(Priority::High, 2 * aging_ms + 1)).await;
    assert_eq!(claim_one(&store, 3 * aging_ms).await.unwrap().job_id, low);
    assert_eq!(claim_one(&store, 3 * aging_ms).await.unwrap().job_id, high);
}

#[tokio::test]
async fn a_stale_end_never_overwrites_the_state_another_writer_set() {
    let (_dir, store) = store(100).await;
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

#[tokio::test]
async fn a_queued_job_claimed_meanwhile_cannot_be_timed_out_from_the_queue() {
    let (_dir, store) = store(100).await;
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

#[tokio::test]
async fn events_replay_in_order_after_any_seq_and_history_keeps_states_and_newest_progress() {
    let (_dir, store) = store(10).await;
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

#[tokio::test]
async fn a_requeued_job_keeps_its_place_and_its_next_claim_is_the_next_attempt() {
    let (_dir, store) = store(100).await;
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

#[tokio::test]
async fn a_cancel_request_is_fenced_and_remembered() {
    let (_dir, store) = store(100).await;
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

#[tokio::test]
async fn pruning_deletes_old_terminal_jobs_but_never_one_whose_completion_is_pending() {
    let (_dir, store) = store(100).await;
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
    store
        .record_attempt(&done.id, attempt, AttemptOutcome::Delivered)
        .await
        .unwrap();
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
