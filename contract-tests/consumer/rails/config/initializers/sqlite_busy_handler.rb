# The sqlite3 gem's busy_timeout (database.yml `timeout`) waits in C holding Ruby's GVL, so a
# callback waiting for the write lock stops the ActiveJob thread that holds it until the timeout
# runs out. A Ruby busy handler sleeps without the GVL. (Rails 7.1+: `retries:` in database.yml.)
ActiveSupport.on_load(:active_record) do
  require "active_record/connection_adapters/sqlite3_adapter"
  ActiveRecord::ConnectionAdapters::SQLite3Adapter.prepend(Module.new do
    private

    def configure_connection
      super
      @connection.busy_handler { |count| count < 2000 && (sleep(0.01) || true) }
    end
  end)
end
