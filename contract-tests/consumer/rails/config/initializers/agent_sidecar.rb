# agent-sidecar settings; every value from the environment so one file serves every deploy.
# Inside to_prepare: AgentSidecar is autoloaded (reloadable in development), so it is configured
# again after every reload, and never referenced while the app is still booting.
Rails.application.config.to_prepare do
  AgentSidecar.configure do |c|
    c.issuer = ENV.fetch("AGENT_SIDECAR_ISSUER", "agent-sidecar")
    c.audience = ENV.fetch("AGENT_SIDECAR_AUDIENCE", "rails")
    c.secret = ENV["AGENT_SIDECAR_CALLBACK_SECRET"]
    c.jwks_url = ENV["AGENT_SIDECAR_JWKS_URL"]
    c.webhook_secrets = ENV.fetch("AGENT_SIDECAR_WEBHOOK_SECRETS", "").split(",")
    c.leeway = Integer(ENV.fetch("AGENT_SIDECAR_LEEWAY", "30"))
    c.sidecar_url = ENV.fetch("AGENT_SIDECAR_URL", "http://127.0.0.1:8780")
    c.sidecar_token = ENV["AGENT_SIDECAR_TOKEN"]
    c.shared_root = ENV.fetch("AGENT_SIDECAR_SHARED_ROOT", "/srv/shared_root")
    c.callback_base_url = ENV.fetch("AGENT_SIDECAR_CALLBACK_BASE_URL", "http://127.0.0.1:3000")
    c.trigger_mode = ENV.fetch("AGENT_SIDECAR_TRIGGER_MODE", "http").to_sym

    # The registry: the only classes a completion can dispatch to (never constantize a job_name).
    c.register("ReportCompileJob", ReportCompileJob)
  end
end
