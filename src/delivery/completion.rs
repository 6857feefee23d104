//! A job's end as Rails hears of it: the runner hands over how the attempt ended (its outputs
//! final), and the completion callback is built and signed here, recorded in the store with
//! the job's end (one transaction: the outbox), then sent at once.

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::Deliveries;
use crate::contract::{
    CompletionCallback, CompletionMeta, DeliveryId, JobError, JobState, PAYLOAD_VERSION, Timestamp,
};
use crate::store::{Finish, JobRecord, NewDelivery, StoreError};

/// How an attempt ended, once its `output/` is final.
#[derive(Debug)]
pub struct Outcome {
    /// The job's final state.
    pub state: JobState,
    /// Why it did not complete, when it did not.
    pub error: Option<JobError>,
    /// The agent's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Where Rails finds the outputs.
    pub output_uri: String,
    /// What the completion says of the outputs (bounded by `callbacks.output_index_max_bytes`).
    pub output_index: serde_json::Value,
    /// When the attempt ended.
    pub finished_at: Timestamp,
    /// How long the agent ran (0 if it never did).
    pub duration_ms: u64,
}

impl Deliveries {
    /// Ends `job` in the store with its signed completion and makes the first attempt;
    /// `StoreError::Stale` if the job moved meanwhile and this end was discarded.
    pub async fn complete(
        self: &Arc<Self>,
        job: &JobRecord,
        end: Outcome,
    ) -> Result<(), StoreError> {
        let callback = self.completion(job, &end);
        let finish = Finish {
            job_id: job.job_id,
            from: job.state,
            attempt: job.attempt,
            state: end.state,
            exit_code: end.exit_code,
            error: end.error,
            output_index: end.output_index,
            at: end.finished_at,
            lease_until: self.lease_until(end.finished_at),
            completion: NewDelivery {
                id: DeliveryId::generate(),
                url: job.request.callback_urls.completion.clone(),
                body: serde_json::to_vec(&callback).unwrap_or_default(),
            },
        };
        match self.store.finish(finish).await {
            Ok(completion) => {
                info!(state = %end.state, duration_ms = end.duration_ms, "job ended");
                let ran = job
                    .started_at
                    .map(|_| Duration::from_millis(end.duration_ms));
                crate::telemetry::job_ended(&job.agent_name, end.state, ran);
                self.send_now(completion);
                Ok(())
            }
            Err(e @ StoreError::Stale { .. }) => {
                warn!(error = %e, "job ended elsewhere; this attempt's result is discarded");
                Err(e)
            }
            Err(e) => {
                error!(error = %e, "cannot record the end of the job; it is recovered on restart");
                Err(e)
            }
        }
    }

    /// The completion callback of `job` ending as `end`, its `sig` made with today's keys.
    fn completion(&self, job: &JobRecord, end: &Outcome) -> CompletionCallback {
        CompletionCallback {
            version: PAYLOAD_VERSION,
            job_id: job.job_id,
            user_id: job.user_id.clone(),
            job_name: job.job_name.clone(),
            agent_name: job.agent_name.clone(),
            status: end.state,
            output_uri: end.output_uri.clone(),
            output_index: end.output_index.clone(),
            error: end.error.clone(),
            meta: CompletionMeta {
                duration_ms: end.duration_ms,
                started_at: job.started_at,
                finished_at: end.finished_at,
                trace_id: job.trace_id.clone(),
                attempt: job.attempt,
            },
            sig: self.transport().signer.payload_sig(
                job.job_id,
                &job.job_name,
                end.state,
                &job.user_id,
                jsonwebtoken::get_current_timestamp(),
            ),
        }
    }
}
