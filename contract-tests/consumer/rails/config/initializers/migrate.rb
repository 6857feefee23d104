# The reference app migrates its own SQLite database on boot; a real app runs db:migrate.
Rails.application.config.after_initialize do
  ActiveRecord::Base.connection.migration_context.migrate
end
