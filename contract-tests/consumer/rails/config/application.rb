# The smallest Rails app that boots on Debian's component packages (Rails 6.1): the example
# domain (reports compiled by an agent) and nothing of agent_sidecar until its generator runs.
require_relative "boot"
require "rails"
require "active_record/railtie"
require "active_job/railtie"
require "action_controller/railtie"
require "action_cable/engine"
require "agent_sidecar"

module ConsumerApp
  class Application < Rails::Application
    config.load_defaults 6.1
    config.root = File.expand_path("..", __dir__)
    config.api_only = true
    config.eager_load = !Rails.env.test?
    config.cache_classes = true
    config.consider_all_requests_local = false
    config.secret_key_base = ENV.fetch("SECRET_KEY_BASE") { "consumer-app-" + "0" * 64 }
    config.hosts.clear
    config.logger = ActiveSupport::Logger.new($stdout)
    config.log_level = ENV.fetch("RAILS_LOG_LEVEL", "info")
    # Handlers run on ActiveJob; :async runs them in this process (one puma in the tests).
    config.active_job.queue_adapter = Rails.env.test? ? :test : :async
    config.action_cable.mount_path = "/cable"
    config.action_cable.disable_request_forgery_protection = true
  end
end
