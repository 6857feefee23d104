module AgentSidecar
  # The idempotency record of one agent job's callbacks.
  class Job < ApplicationRecord
    self.table_name = "agent_sidecar_jobs"

    def terminal?
      AgentSidecar::TERMINAL.include?(status)
    end

    # Advances the progress high-water mark; false when `seq` is not newer (a retry or an
    # out-of-order post), so the caller does not broadcast it twice.
    def self.advance_progress(job_id, seq)
      row = find_or_create_by!(job_id: job_id)
      where(id: row.id).where("last_progress_seq < ?", seq).update_all(last_progress_seq: seq, updated_at: Time.current) == 1
    rescue ActiveRecord::RecordNotUnique
      retry
    end
  end
end
