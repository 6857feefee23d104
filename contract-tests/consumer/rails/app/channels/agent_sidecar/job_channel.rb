module AgentSidecar
  # Progress of one job, and its final message: subscribe with {channel: "AgentSidecar::JobChannel",
  # job_id: "<uuid>"}. Messages are {type: "progress", seq, stage, message, percent, timestamp}
  # and, once, {type: "completed", status, error}.
  class JobChannel < ApplicationCable::Channel
    def subscribed
      job_id = params[:job_id].to_s
      # An app with users also checks here that the job belongs to the connection's user.
      return reject unless AgentSidecar::UUID.match?(job_id)

      stream_from AgentSidecar.stream_for(job_id.downcase)
    end
  end
end
