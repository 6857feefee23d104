# The gem's unit tests: plain minitest on Debian's Rails components, a real SQLite database
# (a temporary file, so threads share it) and ActiveJob's test adapter. Run from clients/ruby:
#   ruby -Ilib -Itest -e 'Dir["test/**/*_test.rb"].each { |f| require File.expand_path(f) }'
require "minitest/autorun"
require "tmpdir"
require "logger"
require "erb"
require "rails"
require "active_record"
require "active_job"
require "action_cable"
require "agent_sidecar"
require "agent_sidecar/testing"

Rails.logger = Logger.new(nil)
ActiveJob::Base.logger = Logger.new(nil)
ActiveJob::Base.queue_adapter = :test
ActionCable.server.config.cable = { "adapter" => "async" }
ActionCable.server.config.logger = Logger.new(nil)

DB_DIR = Dir.mktmpdir("agent_sidecar_test")
Minitest.after_run { FileUtils.rm_rf(DB_DIR) }
ActiveRecord::Base.establish_connection(adapter: "sqlite3", database: File.join(DB_DIR, "test.sqlite3"), pool: 16, timeout: 5000)
ActiveRecord::Migration.verbose = false
# The install generator's migration, as an app gets it.
template = File.read(File.expand_path("../lib/generators/agent_sidecar/install/templates/create_agent_sidecar_jobs.rb.tt", __dir__))
eval(ERB.new(template).result(binding)) # rubocop:disable Security/Eval
CreateAgentSidecarJobs.new.migrate(:up)

root = File.expand_path("..", __dir__)
require File.join(root, "app/models/agent_sidecar/job")
require File.join(root, "app/jobs/agent_sidecar/dispatch_job")
require File.join(root, "app/channels/agent_sidecar/job_channel")

# A handler that counts its runs in the database (in the handler's transaction).
class CountingJob < ActiveJob::Base
  include AgentSidecar::Handler
  cattr_accessor :fail_next, default: false

  def completed(job_id:, status:, output_uri:, output_index:, error:, meta:)
    ActiveRecord::Base.connection.execute("INSERT INTO handler_runs (job_id, status) VALUES (#{ActiveRecord::Base.connection.quote(job_id)}, #{ActiveRecord::Base.connection.quote(status)})")
    if self.class.fail_next
      self.class.fail_next = false
      raise "handler failed"
    end
  end
end
ActiveRecord::Base.connection.create_table(:handler_runs) do |t|
  t.string :job_id
  t.string :status
end

module AgentSidecarTest
  SECRET = "unit-test-callback-secret-0123456789"

  def configure_sidecar
    AgentSidecar.reset_config!
    AgentSidecar.configure do |c|
      c.issuer = "agent-sidecar"
      c.audience = "rails"
      c.secret = SECRET
      c.register("CountingJob")
    end
  end

  def handler_runs(job_id)
    ActiveRecord::Base.connection.select_value("SELECT COUNT(*) FROM handler_runs WHERE job_id = #{ActiveRecord::Base.connection.quote(job_id)}").to_i
  end
end
