module AgentSidecar
  # Progress of one job, and its final message: subscribe with
  # {channel: "AgentSidecar::JobChannel", job_id: "<uuid>"}. Only a subscriber allowed to see the
  # job is accepted (config.authorize_subscription; by default the job's user_id must be the
  # connection's current_user or its id). On subscribing it is sent the job's newest progress
  # and, if the job is over, its final message; then every newer one as it arrives. Messages
  # are {type: "progress", seq, stage, message, percent, timestamp} and, once,
  # {type: "completed", status, error}; a client keeps only a seq newer than the last it saw.
  class JobChannel < ActionCable::Channel::Base
    def subscribed
      job_id = params[:job_id].to_s.downcase
      return reject unless AgentSidecar::UUID.match?(job_id)

      job = AgentSidecar::Job.find_by(job_id: job_id)
      return reject unless allowed?(job)

      stream_from AgentSidecar.stream_for(job_id)
      Array(job&.snapshot_messages).each { |message| transmit(message) }
    end

    private

    def allowed?(job)
      hook = AgentSidecar.config.authorize_subscription
      return hook.call(job, connection) ? true : false if hook
      return false if job.nil? || job.user_id.blank?

      user = connection.respond_to?(:current_user) ? connection.current_user : nil
      id = user.respond_to?(:id) ? user.id : user
      id.present? && id.to_s == job.user_id.to_s
    end
  end
end
