module ApplicationCable
  # AgentSidecar::JobChannel lets a connection watch only its user's jobs. This example app has
  # no sessions, so it takes the user from `?user_id=` (for the tests only); a real app finds
  # the user from its session cookie or a signed token here and rejects strangers.
  class Connection < ActionCable::Connection::Base
    identified_by :current_user

    def connect
      self.current_user = request.params[:user_id].presence
    end
  end
end
