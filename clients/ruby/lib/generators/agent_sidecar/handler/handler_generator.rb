require "rails/generators"

module AgentSidecar
  module Generators
    # rails g agent_sidecar:handler ReportCompileJob: the handler, its registry line and a test.
    class HandlerGenerator < ::Rails::Generators::NamedBase
      source_root File.expand_path("templates", __dir__)
      desc "Adds an agent_sidecar completion handler (an ActiveJob), registers it and tests it."

      def handler
        template "handler.rb.tt", File.join("app/jobs", class_path, "#{file_name}.rb")
      end

      def test
        template "handler_test.rb.tt", File.join("test/jobs", class_path, "#{file_name}_test.rb")
      end

      def register
        initializer = "config/initializers/agent_sidecar.rb"
        line = %(  c.register "#{job_name}"\n)
        if File.exist?(File.join(destination_root, initializer))
          return if File.read(File.join(destination_root, initializer)).include?(line)

          inject_into_file initializer, line, after: /# agent_sidecar:handlers.*\n/
        else
          say_status :skip, "#{initializer} is missing (run agent_sidecar:install): register #{job_name} yourself", :yellow
        end
      end

      private

      def job_name
        class_name
      end

      def parent_class
        File.exist?(File.join(destination_root, "app/jobs/application_job.rb")) ? "ApplicationJob" : "ActiveJob::Base"
      end
    end
  end
end
