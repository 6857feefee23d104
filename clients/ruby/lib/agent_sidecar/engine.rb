require "rails"
require "action_controller/railtie"
require "active_record/railtie"
require "active_job/railtie"
require "action_cable/engine"
require "agent_sidecar/progress_helper"

module AgentSidecar
  # Mounted by the install generator (`mount AgentSidecar::Engine => "/agents"`): POST
  # <mount>/update/:user_id (progress) and <mount>/completed/:user_id (completion).
  class Engine < ::Rails::Engine
    isolate_namespace AgentSidecar

    # The completion's `sig`, bearer tokens and the job's params never reach the logs.
    initializer "agent_sidecar.filter_parameters" do |app|
      app.config.filter_parameters |= %i[sig token params authorization]
    end

    initializer "agent_sidecar.helpers" do
      ActiveSupport.on_load(:action_view) { include AgentSidecar::ProgressHelper }
    end

    class << self
      # Where the app mounted the engine ("/agents" unless it chose otherwise).
      def mount_path
        return "/agents" unless ::Rails.application

        route = ::Rails.application.routes.routes.find { |r| r.app.respond_to?(:app) && r.app.app == self }
        route ? route.path.spec.to_s.chomp("/") : "/agents"
      end

      # callback_urls for a trigger: this app's progress and completion endpoints.
      def callback_urls(base_url, user_id)
        prefix = "#{base_url.to_s.chomp('/')}#{mount_path}"
        user = ERB::Util.url_encode(user_id.to_s)
        { progress: "#{prefix}/update/#{user}", completion: "#{prefix}/completed/#{user}" }
      end
    end
  end
end
