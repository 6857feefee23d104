module ApplicationCable
  # Identify the user here (cookies, a signed token) so AgentSidecar::JobChannel can check that
  # the job is theirs; the reference app has no users.
  class Connection < ActionCable::Connection::Base
  end
end
