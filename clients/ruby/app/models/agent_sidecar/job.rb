module AgentSidecar
  # One row per agent job this app has triggered or heard of: who it belongs to, its newest
  # progress, and the exactly-once record of its completion (`completed_at`: the completion was
  # accepted once; `dispatched_at`: its handler was enqueued; `handled_at`: the handler ran and
  # committed).
  class Job < ActiveRecord::Base
    self.table_name = "agent_sidecar_jobs"

    def terminal?
      AgentSidecar::TERMINAL.include?(status)
    end

    # The row of `job_id`, created if missing; safe against a concurrent insert.
    def self.for!(job_id)
      find_or_create_by!(job_id: job_id)
    rescue ActiveRecord::RecordNotUnique
      retry
    end

    # Records who triggered `job_id` (before the sidecar hears of it).
    def self.remember(job_id, user_id:, job_name:)
      row = for!(job_id)
      where(id: row.id).update_all(user_id: user_id.to_s, job_name: job_name, updated_at: Time.current)
    end

    # Advances the progress high-water mark and keeps the message; false when `seq` is not
    # newer (a retry or an out-of-order post), so the caller does not broadcast it twice.
    def self.advance_progress(job_id, seq, message)
      row = for!(job_id)
      where(id: row.id).where("last_progress_seq < ?", seq)
        .update_all(last_progress_seq: seq, last_progress: message, updated_at: Time.current) == 1
    end

    # Takes the completion: true for the one delivery that moves the row to terminal, false for
    # every later one (the conditional UPDATE is the lock: of two concurrent deliveries only one
    # matches), whose duplicate is counted.
    def self.claim_completion(job_id, payload, delivery_id)
      row = for!(job_id)
      now = Time.current
      claimed = where(id: row.id, completed_at: nil).update_all(
        status: payload["status"], job_name: payload["job_name"], completion_delivery_id: delivery_id,
        completion: payload, completed_at: now, updated_at: now
      ) == 1
      where(id: row.id).update_all("duplicate_completions = duplicate_completions + 1") unless claimed
      claimed
    end

    # The keyword arguments of JobName.completed.
    def handler_arguments
      c = completion || {}
      {
        job_id: job_id, status: c["status"], output_uri: c["output_uri"], output_index: c["output_index"] || {},
        error: c["error"], meta: c["meta"] || {}
      }
    end

    # The messages a late ActionCable subscriber is sent first: the newest progress and, when
    # the job is over, its final message.
    def snapshot_messages
      messages = []
      messages << last_progress.merge("type" => "progress") if last_progress.is_a?(Hash)
      messages << completed_message if completed_at
      messages
    end

    def completed_message
      { "type" => "completed", "status" => status, "error" => (completion || {})["error"] }
    end
  end
end
