module AgentSidecar
  # callback_urls.progress and callback_urls.completion (seed 000, "Completion Handling").
  # Answers fast: the handler runs later, on the app's ActiveJob queue.
  class CallbacksController < ActionController::API
    include AgentSidecar::VerifiedCallback

    # POST <mount>/update/:user_id — broadcast to the job's ActionCable stream, newest seq only.
    def progress
      payload = callback_payload or return
      job_id = checked_job_id(payload) or return
      seq = payload["seq"]
      return render_problem(400, "Bad Request", "seq must be a positive integer", pointer: "/seq") unless seq.is_a?(Integer) && seq.positive?

      message = payload.slice("seq", "stage", "message", "percent", "timestamp")
      if AgentSidecar::Job.advance_progress(job_id, seq, message)
        ActionCable.server.broadcast(AgentSidecar.stream_for(job_id), message.merge("type" => "progress"))
        AgentSidecar::ProgressHelper.broadcast_turbo(job_id, message) if AgentSidecar::ProgressHelper.turbo?
      end
      render json: { status: "ok" }
    end

    # POST <mount>/completed/:user_id — JobName.completed, once per job, through ActiveJob.
    def completion
      payload = callback_payload or return
      job_id = checked_job_id(payload) or return
      job_name = payload["job_name"]
      return render_problem(400, "Bad Request", "job_name is required", pointer: "/job_name") if job_name.blank?

      unless AgentSidecar.config.registered?(job_name)
        Rails.logger.error("agent-sidecar completion for unknown job_name #{job_name.inspect} (job #{job_id})")
        return render_problem(422, "Unprocessable Entity", "unknown job_name #{job_name}", pointer: "/job_name")
      end
      return render_problem(400, "Bad Request", "status is not terminal", pointer: "/status") unless AgentSidecar::TERMINAL.include?(payload["status"])

      outcome = AgentSidecar::Completion.new(payload, job_id: job_id, job_name: job_name, delivery_id: callback_claims["jti"]).receive
      case outcome
      when :handled then render json: { status: "ok" }
      when :duplicate then render json: { status: "duplicate" }
      when :handler_unavailable
        render_problem(422, "Unprocessable Entity", "#{job_name}.completed is not implemented", pointer: "/job_name")
      end
    end

    private

    # The body's job_id, which must be the token's subject.
    def checked_job_id(payload)
      job_id = payload["job_id"].to_s.downcase
      return job_id if AgentSidecar::UUID.match?(job_id) && job_id == callback_claims["sub"].to_s.downcase

      render_problem(400, "Bad Request", "job_id is missing or is not the token's subject", pointer: "/job_id") && nil
    end
  end
end
