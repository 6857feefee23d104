# A minimal Rails app around the agent-sidecar reference consumer. Only the component gems are
# loaded, from the system (Debian's ruby-* packages) or a Gemfile listing them.
require "rails"
require "active_record/railtie"
require "action_controller/railtie"
require "action_cable/engine"

module ConsumerApp
  class Application < Rails::Application
    config.load_defaults 6.1
    config.root = File.expand_path("..", __dir__)
    config.api_only = true
    config.eager_load = true
    config.cache_classes = true
    config.consider_all_requests_local = false
    config.secret_key_base = ENV.fetch("SECRET_KEY_BASE") { "consumer-app-" + "0" * 64 }
    config.hosts.clear
    config.autoload_paths << root.join("lib")
    config.eager_load_paths << root.join("lib")
    config.logger = ActiveSupport::Logger.new($stdout)
    config.log_level = ENV.fetch("RAILS_LOG_LEVEL", "info")
    config.action_cable.mount_path = "/cable"
    config.action_cable.disable_request_forgery_protection = true
  end
end
