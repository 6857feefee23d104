module AgentSidecar
  # One completion callback, and the handler run it leads to.
  #
  # Receiving (`#receive`, in the callback): the first completion of a job moves its row to
  # terminal (a conditional UPDATE, so of two concurrent deliveries only one wins), enqueues the
  # registered handler through ActiveJob and broadcasts the final message; every later one,
  # with the same or another delivery id, is a benign duplicate (200 "duplicate"), and enqueues
  # the handler again only if the first enqueue never happened (a crash in between).
  #
  # Handling (`.run_handler`, in the ActiveJob): see AgentSidecar::Handler.
  class Completion
    # A completion accepted this long ago whose handler was never enqueued (the process died in
    # between) is enqueued by the next duplicate. Sooner, the winner may still be enqueuing.
    REDISPATCH_AFTER = 30

    def initialize(payload, job_id:, job_name:, delivery_id:)
      @payload = payload
      @job_id = job_id
      @job_name = job_name
      @delivery_id = delivery_id
    end

    # :handled (accepted and dispatched), :duplicate or :handler_unavailable.
    def receive
      handler = resolve_handler
      unless handler && AgentSidecar::Dispatch.dispatchable?(handler)
        Rails.logger.error("agent-sidecar: #{@job_name}.completed is not implemented (job #{@job_id})")
        row = AgentSidecar::Job.for!(@job_id)
        AgentSidecar::Job.where(id: row.id, completed_at: nil).update_all(status: "errored", updated_at: Time.current)
        return :handler_unavailable
      end
      if AgentSidecar::Job.claim_completion(@job_id, @payload, @delivery_id)
        # The final message first: if the enqueue below fails (500), the sidecar's retry is a
        # duplicate, which enqueues again but would not broadcast again.
        ActionCable.server.broadcast(AgentSidecar.stream_for(@job_id), AgentSidecar::Job.find_by!(job_id: @job_id).completed_message)
        dispatch(handler)
        :handled
      else
        redispatch(handler)
        Rails.logger.info("agent-sidecar: benign duplicate completion for job #{@job_id} (delivery #{@delivery_id})")
        :duplicate
      end
    end

    # Runs `target.completed(**arguments)` once per job: inside one transaction whose first
    # statement marks the row handled (taking the write lock at once on SQLite, the row lock on
    # PostgreSQL), so a second run waits for the first and then finds it handled. Returns false
    # when the job was already handled.
    def self.run_handler(job_id, target)
      ActiveRecord::Base.transaction do
        now = Time.current
        claimed = AgentSidecar::Job.where(job_id: job_id, handled_at: nil).where.not(completed_at: nil)
                                   .update_all(handled_at: now, updated_at: now) == 1
        unless claimed
          Rails.logger.info("agent-sidecar: job #{job_id} was already handled")
          next false
        end
        target.completed(**AgentSidecar::Job.find_by!(job_id: job_id).handler_arguments)
        true
      end
    end

    private

    def resolve_handler
      AgentSidecar.config.handler_for(@job_name)
    rescue NameError => e
      Rails.logger.error("agent-sidecar: handler of #{@job_name} does not load: #{e.message}")
      nil
    end

    # Takes the re-enqueue with a conditional UPDATE, so of concurrent duplicates one does it.
    def redispatch(handler)
      now = Time.current
      taken = AgentSidecar::Job.where(job_id: @job_id, dispatched_at: nil, handled_at: nil)
                               .where("completed_at < ?", now - REDISPATCH_AFTER).update_all(dispatched_at: now) == 1
      return unless taken

      Rails.logger.warn("agent-sidecar: job #{@job_id}'s handler was never enqueued; enqueuing it now")
      AgentSidecar::Dispatch.enqueue(handler, @job_id)
    end

    def dispatch(handler)
      AgentSidecar::Dispatch.enqueue(handler, @job_id)
      AgentSidecar::Job.where(job_id: @job_id).update_all(dispatched_at: Time.current)
    end
  end
end
