module AgentSidecar
  # Include in the ActiveJob class a job_name is registered to:
  #
  #   class ReportCompileJob < ApplicationJob
  #     include AgentSidecar::Handler
  #     queue_as :reports
  #     retry_on Timeout::Error, attempts: 5
  #
  #     def completed(job_id:, status:, output_uri:, output_index:, error:, meta:)
  #       ...
  #     end
  #   end
  #
  # The callback enqueues it (perform_later with the job id) and answers at once; the job runs
  # on the app's queue with the app's retries. `completed` runs inside a transaction that first
  # marks the job handled: its database writes commit together with that mark, so however often
  # the job is enqueued or retried, one run's writes commit (a raise rolls both back and lets
  # ActiveJob retry). Effects outside the database are at least once: key them on job_id.
  module Handler
    def self.included(base)
      base.extend(ClassMethods)
    end

    # `ReportCompileJob.completed(...)` runs the handler at once (in tests, consoles).
    module ClassMethods
      def completed(**arguments)
        new.completed(**arguments)
      end
    end

    def perform(job_id)
      AgentSidecar::Completion.run_handler(job_id, self)
    end
  end

  # Runs a registered handler that is a plain class with `self.completed` on
  # `config.queue`, exactly like an AgentSidecar::Handler.
  module Dispatch
    module_function

    # Enqueues the handler of `job_id`'s completion.
    def enqueue(handler, job_id)
      if handler.is_a?(Class) && defined?(ActiveJob::Base) && handler < ActiveJob::Base
        handler.perform_later(job_id)
      else
        AgentSidecar::DispatchJob.set(queue: AgentSidecar.config.queue).perform_later(job_id)
      end
    end

    def dispatchable?(handler)
      return false unless handler.is_a?(Class)
      return handler.include?(AgentSidecar::Handler) && handler.method_defined?(:completed) if defined?(ActiveJob::Base) && handler < ActiveJob::Base

      handler.respond_to?(:completed)
    end
  end
end
