module AgentSidecar
  # Calls `JobName.completed` for a handler registered as a plain class (not an ActiveJob).
  class DispatchJob < ActiveJob::Base
    def perform(job_id)
      row = AgentSidecar::Job.find_by!(job_id: job_id)
      handler = AgentSidecar.config.handler_for(row.job_name)
      raise AgentSidecar::Error, "#{row.job_name} is no longer registered" unless handler

      AgentSidecar::Completion.run_handler(job_id, handler)
    end
  end
end
