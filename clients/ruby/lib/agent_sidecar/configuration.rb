module AgentSidecar
  # Every setting of the gem, set in config/initializers/agent_sidecar.rb (the install generator
  # writes one that reads each from ENV or credentials).
  class Configuration
    JOB_NAME = /\A[A-Z][A-Za-z0-9_]*(::[A-Z][A-Za-z0-9_]*)*\z/.freeze

    # --- receiving callbacks ---
    # `iss` and `aud` the callback JWTs must carry ([callbacks.jwt] issuer / audience).
    attr_accessor :issuer, :audience
    # HS256 shared secret ([callbacks.jwt] secret), and/or the sidecar's JWKS URL (RS256/ES256).
    attr_accessor :secret, :jwks_url
    # Standard Webhooks `whsec_...` secrets; when any is set, `webhook-signature` is required.
    attr_accessor :webhook_secrets
    # Seconds of clock skew tolerated on `exp` and `webhook-timestamp`.
    attr_accessor :leeway
    # ActiveJob queue of AgentSidecar::DispatchJob (handlers that are not ActiveJobs themselves).
    attr_accessor :queue
    # Who may watch a job over ActionCable: `->(job, connection) { ... }`, job an
    # AgentSidecar::Job (nil if unknown). Default: the job's user_id is the connection's
    # current_user (or its id).
    attr_accessor :authorize_subscription

    # --- triggering ---
    # The sidecar's base URL as this app reaches it.
    attr_accessor :sidecar_url
    # [server.auth] of the sidecar: the gem mints a short-lived HS256 token per request from
    # `api_secret` (with `api_issuer`, `api_audience`, `api_token_ttl` seconds). Or set
    # `sidecar_token` to a fixed string or a callable returning one.
    attr_accessor :api_secret, :api_issuer, :api_audience, :api_token_ttl, :sidecar_token
    # The shared_root mount where job folders are written.
    attr_accessor :shared_root
    # Base URL the sidecar reaches this app at; callback_urls are built from it and the routes.
    attr_accessor :callback_base_url
    # :http (POST /agents/trigger) or :folder (input/trigger.json; the answer is read from
    # output/trigger-response.json within `folder_answer_timeout` seconds).
    attr_accessor :trigger_mode, :folder_answer_timeout
    # HTTP timeouts (seconds), attempts per request, and the longest Retry-After honoured.
    attr_accessor :open_timeout, :read_timeout, :max_attempts, :max_retry_after
    # How inputs given as files reach input/: :copy or :link (hard link, same filesystem).
    attr_accessor :input_mode

    # --- dashboard ---
    # The sidecar's URL as a browser reaches it (defaults to sidecar_url).
    attr_accessor :dashboard_base_url

    def initialize
      @issuer = "agent-sidecar"
      @audience = "rails"
      @webhook_secrets = []
      @leeway = 30
      @queue = :default
      @authorize_subscription = nil
      @sidecar_url = "http://127.0.0.1:8780"
      @api_issuer = "rails"
      @api_audience = "agent-sidecar"
      @api_token_ttl = 60
      @trigger_mode = :http
      @folder_answer_timeout = 30
      @open_timeout = 3
      @read_timeout = 10
      @max_attempts = 3
      @max_retry_after = 10
      @input_mode = :copy
      @registry = {}
    end

    # Registers the handler of a job_name: a class name (resolved when a completion arrives, so
    # it reloads in development) or the class. Only registered job_names ever reach a class;
    # nothing from a request is constantized.
    def register(job_name, handler = job_name)
      raise ArgumentError, "#{job_name.inspect} is not a Ruby constant name" unless JOB_NAME.match?(job_name.to_s)

      @registry[job_name.to_s] = handler
    end

    # The handler class of `job_name`, or nil when it is not registered.
    def handler_for(job_name)
      handler = @registry[job_name.to_s]
      handler.is_a?(String) || handler.is_a?(Symbol) ? Object.const_get(handler.to_s) : handler
    end

    def registered?(job_name)
      @registry.key?(job_name.to_s)
    end

    def job_names
      @registry.keys
    end
  end
end
