Rails.application.routes.draw do
  # The example domain: a report compiled by an agent. (`rails g agent_sidecar:install` adds
  # the mount of the callback endpoints above these lines.)
  post "/reports", to: "reports#create"
  post "/reports/:job_id/cancel", to: "reports#cancel"
  get "/reports/:job_id", to: "reports#show"
  get "/up", to: proc { [200, { "Content-Type" => "text/plain" }, ["ok"]] }
end
