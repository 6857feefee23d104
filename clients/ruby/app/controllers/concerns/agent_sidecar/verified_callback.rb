module AgentSidecar
  # Include in a controller that receives agent-sidecar callbacks: every action is verified
  # before it runs (see AgentSidecar::Verifier) and answers 401 problem+json otherwise. The action
  # name is the callback event the token must be for ("progress" or "completion").
  module VerifiedCallback
    extend ActiveSupport::Concern

    included do
      before_action :verify_agent_sidecar_callback!
    end

    private

    attr_reader :callback_claims

    def verify_agent_sidecar_callback!
      @callback_claims = agent_sidecar_verifier.verify!(
        authorization: request.authorization,
        body: request.raw_post,
        event: action_name,
        headers: %w[webhook-id webhook-timestamp webhook-signature].index_with { |h| request.headers[h] }
      )
    rescue AgentSidecar::Unauthorized => e
      Rails.logger.warn("agent-sidecar #{action_name} callback refused: #{e.message}")
      render_problem(401, "Unauthorized", e.message)
    rescue AgentSidecar::Unavailable => e
      Rails.logger.error("agent-sidecar #{action_name} callback not checked: #{e.message}")
      response.set_header("Retry-After", "30")
      render_problem(503, "Service Unavailable", e.message)
    end

    def agent_sidecar_verifier
      @@agent_sidecar_verifier ||= AgentSidecar::Verifier.new
    end

    # The JSON body, or nil after answering 400.
    def callback_payload
      payload = JSON.parse(request.raw_post)
      return payload if payload.is_a?(Hash)

      render_problem(400, "Bad Request", "the body is not a JSON object") && nil
    rescue JSON::ParserError
      render_problem(400, "Bad Request", "the body is not JSON") && nil
    end

    # RFC 9457 problem+json.
    def render_problem(status, title, detail, pointer: nil)
      body = { type: "about:blank", title: title, status: status, detail: detail }
      body[:errors] = [{ pointer: pointer, detail: detail }] if pointer
      render json: body, status: status, content_type: "application/problem+json"
    end
  end
end
