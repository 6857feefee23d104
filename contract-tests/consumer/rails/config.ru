require_relative "config/environment"

# The example app migrates its own SQLite database on boot; a real app runs db:migrate.
ActiveRecord::Base.connection.migration_context.migrate

run Rails.application
