require_relative "config/environment"

# The example app migrates its own SQLite database on boot; a real app runs db:migrate. WAL lets
# the callbacks read while a handler (on ActiveJob's :async threads) holds the write lock.
ActiveRecord::Base.connection.execute("PRAGMA journal_mode = WAL")
ActiveRecord::Base.connection.migration_context.migrate

run Rails.application
