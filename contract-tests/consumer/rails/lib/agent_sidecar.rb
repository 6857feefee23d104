# agent-sidecar reference consumer: configuration shared by the callback controller, the
# verifier and the trigger client. Copy lib/agent_sidecar*, app/**/agent_sidecar/**, the
# migration and the two routes into your app (see README.md).
module AgentSidecar
  # Settings, usually from config/initializers/agent_sidecar.rb.
  class Configuration
    # `iss` and `aud` the callback JWTs must carry ([callbacks.jwt] issuer / audience).
    attr_accessor :issuer, :audience
    # HS256 shared secret ([callbacks.jwt] secret), and/or the sidecar's JWKS URL for RS256/ES256.
    attr_accessor :secret, :jwks_url
    # Standard Webhooks `whsec_...` secrets; when set, `webhook-signature` is required too.
    attr_accessor :webhook_secrets
    # Seconds of clock skew tolerated on `exp` and `webhook-timestamp`.
    attr_accessor :leeway
    # The sidecar (`POST /agents/trigger`), its bearer token if [server.auth] is on (a string, or
    # a lambda called per request to mint a short-lived JWT), and the shared_root mount where the
    # job folders are written.
    attr_accessor :sidecar_url, :sidecar_token, :shared_root
    # Base URL the sidecar reaches this app at (callback_urls are built from it).
    attr_accessor :callback_base_url
    # :http (POST /agents/trigger) or :folder (input/trigger.json), and how long folder mode
    # waits for output/trigger-response.json.
    attr_accessor :trigger_mode, :folder_answer_timeout
    # job_name => handler class: the only classes a callback can ever dispatch to.
    attr_reader :registry

    def initialize
      @issuer = "agent-sidecar"
      @audience = "rails"
      @webhook_secrets = []
      @leeway = 30
      @trigger_mode = :http
      @folder_answer_timeout = 30
      @registry = {}
    end

    # Registers the handler of a job_name. The class must respond to `completed(job_id:, ...)`.
    def register(job_name, handler)
      raise ArgumentError, "#{job_name.inspect} is not a Ruby constant name" unless job_name.to_s.match?(/\A[A-Z][A-Za-z0-9_]*(::[A-Z][A-Za-z0-9_]*)*\z/)

      @registry[job_name.to_s] = handler
    end
  end

  class << self
    def config
      @config ||= Configuration.new
    end

    def configure
      yield config
    end

    # ActionCable stream of one job's progress and its final message.
    def stream_for(job_id)
      "agent_sidecar:job:#{job_id}"
    end
  end

  UUID = /\A[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\z/.freeze
  TERMINAL = %w[completed partial failed canceled timed_out].freeze
end
