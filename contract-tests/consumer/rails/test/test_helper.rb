ENV["RAILS_ENV"] = "test"
ENV["CONSUMER_DATABASE"] ||= File.expand_path("../tmp/test.sqlite3", __dir__)
require_relative "../config/environment"
# The example app migrates its test database itself (no db/schema.rb).
ActiveRecord::Base.connection.migration_context.migrate
require "rails/test_help"
require "agent_sidecar/testing"
