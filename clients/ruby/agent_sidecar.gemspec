require_relative "lib/agent_sidecar/version"

Gem::Specification.new do |s|
  s.name = "agent_sidecar"
  s.version = AgentSidecar::VERSION
  s.summary = "Rails side of agent-sidecar: trigger agent jobs, receive their signed callbacks exactly once"
  s.description = <<~TEXT
    A Rails engine for agent-sidecar: AgentSidecar.trigger writes the job folder and a v2
    manifest and POSTs /agents/trigger; the engine verifies the sidecar's progress and
    completion callbacks (JWT via secret or JWKS, Standard Webhooks), records each job once and
    dispatches JobName.completed through ActiveJob; an ActionCable channel streams progress.
  TEXT
  s.authors = ["agent-sidecar"]
  s.license = "MIT"
  s.required_ruby_version = ">= 2.7"
  s.files = Dir["lib/**/*", "app/**/*", "config/**/*", "README.md"]
  s.require_paths = ["lib"]
  # Only what Debian packages as ruby-*: railties, actionpack, activerecord, activejob,
  # actioncable (6.1 in bookworm) and ruby-jwt.
  s.add_dependency "railties", ">= 6.1", "< 9"
  s.add_dependency "actionpack", ">= 6.1", "< 9"
  s.add_dependency "activerecord", ">= 6.1", "< 9"
  s.add_dependency "activejob", ">= 6.1", "< 9"
  s.add_dependency "actioncable", ">= 6.1", "< 9"
  s.add_dependency "jwt", ">= 2.5", "< 4"
end
