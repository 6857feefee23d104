module AgentSidecar
  # Applies one completion callback exactly once per job: the first terminal callback of a job
  # moves its row to the terminal state and runs the handler in the same transaction (a handler
  # that raises rolls both back, and the sidecar retries); every later one, whatever its
  # delivery id, is a benign duplicate.
  class Completion
    def initialize(payload, job_id:, handler:, delivery_id:)
      @payload = payload
      @job_id = job_id
      @handler = handler
      @delivery_id = delivery_id
    end

    # :handled, :duplicate or :handler_unavailable.
    def apply
      row = record
      return after(:duplicate) if row.completed_at

      unless @handler.respond_to?(:completed)
        Rails.logger.error("agent-sidecar: #{@handler}.completed is not implemented (job #{@job_id})")
        row.update!(status: "errored")
        return :handler_unavailable
      end
      # The conditional UPDATE is the transaction's first statement: it takes the write lock at
      # once (SQLite) and never follows a failed INSERT (PostgreSQL aborts the transaction).
      outcome = ActiveRecord::Base.transaction do
        next :duplicate unless claim(row)

        @handler.completed(**arguments)
        :handled
      end
      after(outcome)
    end

    private

    def record
      AgentSidecar::Job.find_or_create_by!(job_id: @job_id)
    rescue ActiveRecord::RecordNotUnique
      retry
    end

    # The conditional update is the lock: of two concurrent deliveries only one matches.
    def claim(row)
      AgentSidecar::Job.where(id: row.id, completed_at: nil).update_all(
        status: @payload["status"], job_name: @payload["job_name"], completion_delivery_id: @delivery_id,
        completion: @payload, completed_at: Time.current, updated_at: Time.current
      ) == 1
    end

    def arguments
      {
        job_id: @job_id, status: @payload["status"], output_uri: @payload["output_uri"],
        output_index: @payload["output_index"], error: @payload["error"], meta: @payload["meta"]
      }
    end

    def after(outcome)
      if outcome == :duplicate
        AgentSidecar::Job.where(job_id: @job_id).update_all("duplicate_completions = duplicate_completions + 1")
        Rails.logger.info("agent-sidecar: benign duplicate completion for job #{@job_id} (delivery #{@delivery_id})")
      else
        message = { "type" => "completed", "status" => @payload["status"], "error" => @payload["error"] }
        ActionCable.server.broadcast(AgentSidecar.stream_for(@job_id), message)
      end
      outcome
    end
  end
end
