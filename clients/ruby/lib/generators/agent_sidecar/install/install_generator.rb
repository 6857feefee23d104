require "rails/generators"
require "rails/generators/active_record"

module AgentSidecar
  module Generators
    # rails g agent_sidecar:install [--handler ExampleAgentJob] [--mount /agents]
    class InstallGenerator < ::Rails::Generators::Base
      include ::Rails::Generators::Migration

      source_root File.expand_path("templates", __dir__)
      desc "Adds agent_sidecar to the app: initializer, migration, routes mount, an example handler and its test."

      class_option :handler, type: :string, default: "ExampleAgentJob", desc: "The example handler's class name"
      class_option :mount, type: :string, default: "/agents", desc: "Where the callback endpoints are mounted"

      def self.next_migration_number(dirname)
        ::ActiveRecord::Generators::Base.next_migration_number(dirname)
      end

      def initializer
        template "agent_sidecar.rb.tt", "config/initializers/agent_sidecar.rb"
      end

      def migration
        migration_template "create_agent_sidecar_jobs.rb.tt", "db/migrate/create_agent_sidecar_jobs.rb"
      end

      def mount
        route %(mount AgentSidecar::Engine => #{options[:mount].to_s.inspect}, as: "agent_sidecar")
      end

      def example_handler
        invoke "agent_sidecar:handler", [options[:handler]]
      end

      def three_things_left
        say <<~TEXT

          agent_sidecar is installed. Three things are left to do:
            1. Give it the sidecar's signing key and URLs: AGENT_SIDECAR_CALLBACK_SECRET (or
               AGENT_SIDECAR_JWKS_URL), AGENT_SIDECAR_URL, AGENT_SIDECAR_SHARED_ROOT and
               AGENT_SIDECAR_CALLBACK_BASE_URL, in ENV or credentials (config/initializers/agent_sidecar.rb).
            2. Run bin/rails db:migrate.
            3. Say who may watch a job: identify the user in ApplicationCable::Connection
               (identified_by :current_user) or set c.authorize_subscription; and on the sidecar,
               allow this app's origin ([callbacks] allowed_origins) and its job names.
        TEXT
      end

      private

      def mount_path
        options[:mount]
      end
    end
  end
end
