# The sidecar's callback_urls.progress and callback_urls.completion, under the engine's mount.
AgentSidecar::Engine.routes.draw do
  post "update/:user_id", to: "callbacks#progress", as: :progress
  post "completed/:user_id", to: "callbacks#completion", as: :completion
end
