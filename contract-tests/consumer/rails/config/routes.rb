Rails.application.routes.draw do
  # The agent-sidecar callbacks (callback_urls.progress / callback_urls.completion).
  post "/agents/update/:user_id", to: "agent_sidecar/callbacks#progress", as: :agent_sidecar_progress
  post "/agents/completed/:user_id", to: "agent_sidecar/callbacks#completion", as: :agent_sidecar_completion

  # The example domain: a report compiled by an agent.
  post "/reports", to: "reports#create"
  post "/reports/:job_id/cancel", to: "reports#cancel"
  get "/reports/:job_id", to: "reports#show"
  get "/up", to: proc { [200, { "Content-Type" => "text/plain" }, ["ok"]] }
end
