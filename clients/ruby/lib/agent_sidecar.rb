require "json"
require "active_support"
require "active_support/core_ext"
require "agent_sidecar/version"
require "agent_sidecar/errors"
require "agent_sidecar/configuration"
require "agent_sidecar/token"
require "agent_sidecar/job_folder"
require "agent_sidecar/client"
require "agent_sidecar/verifier"
require "agent_sidecar/handler"
require "agent_sidecar/completion"

# The Rails side of agent-sidecar.
#
# - AgentSidecar.trigger / status / cancel / list / redrive / events: the sidecar's API
#   (AgentSidecar::Client), after the job folder is written (AgentSidecar::JobFolder).
# - AgentSidecar::Engine: the progress and completion endpoints (AgentSidecar::Verifier), the
#   exactly-once record (AgentSidecar::Job), dispatch to the registered handler through ActiveJob
#   (AgentSidecar::Handler, AgentSidecar::DispatchJob), the ActionCable channel and view helper.
# - AgentSidecar::Testing: signs callbacks as the sidecar does, for the app's own tests.
module AgentSidecar
  UUID = /\A[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\z/.freeze
  TERMINAL = %w[completed partial failed canceled timed_out].freeze

  class << self
    def config
      @config ||= Configuration.new
    end

    def configure
      yield config
    end

    # Drops the configuration (tests).
    def reset_config!
      @config = nil
    end

    # ActionCable stream of one job's progress and its final message.
    def stream_for(job_id)
      "agent_sidecar:job:#{job_id}"
    end

    # Starts an agent job; see AgentSidecar::Client#trigger.
    def trigger(**kwargs)
      Client.new.trigger(**kwargs)
    end

    def status(job_id)
      Client.new.status(job_id)
    end

    def cancel(job_id)
      Client.new.cancel(job_id)
    end

    def list(**filters)
      Client.new.list(**filters)
    end

    def redrive(delivery_id)
      Client.new.redrive(delivery_id)
    end

    # Yields each server-sent event of a job ({id:, event:, data:}) until the stream ends.
    def events(job_id, &block)
      Client.new.events(job_id, &block)
    end

    # A URL for the sidecar's dashboard carrying a short-lived token; see AgentSidecar::Token.
    def dashboard_url(role: :read_only, ttl: 900, subject: "dashboard")
      token = Token.dashboard(config, role: role, ttl: ttl, subject: subject)
      base = (config.dashboard_base_url || config.sidecar_url).to_s.chomp("/")
      "#{base}/ui#token=#{token}"
    end
  end
end

require "agent_sidecar/engine" if defined?(Rails::Engine)
