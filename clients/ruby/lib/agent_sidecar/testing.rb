require "jwt"
require "json"
require "openssl"
require "base64"
require "securerandom"

module AgentSidecar
  # Callbacks signed exactly as the sidecar signs them (bearer JWT with `body_sha256`, the body's
  # `sig`, Standard Webhooks headers when webhook_secrets are set), with the app's own
  # configuration, so an app's tests post a valid completion without a sidecar:
  #
  #   class ReportCompileJobTest < ActionDispatch::IntegrationTest
  #     include AgentSidecar::Testing
  #     test "a completion runs the handler once" do
  #       post_agent_sidecar_completion(job_name: "ReportCompileJob", status: "completed")
  #       assert_response :ok
  #     end
  #   end
  #
  # Signing needs config.secret (HS256), or a private key passed as `key:` (RS256/ES256, with
  # `algorithm:` and `kid:`) for an app that verifies against a JWKS.
  module Testing
    module_function

    def completion_body(job_name:, job_id: SecureRandom.uuid, status: "completed", user_id: "42", agent_name: "test_agent",
                        output_index: { "version" => 1, "artifacts" => [] }, error: nil, meta: { "duration_ms" => 1 }, config: AgentSidecar.config)
      error = { "reason" => error.to_s, "message" => error.to_s } if error && !error.is_a?(Hash)
      body = {
        "version" => 1, "job_id" => job_id, "user_id" => user_id.to_s, "job_name" => job_name, "agent_name" => agent_name,
        "status" => status, "output_uri" => "file:///shared_root/#{job_id}/output/", "output_index" => output_index,
        "error" => error, "meta" => meta
      }
      body["sig"] = body_sig(body, config) if config.secret.present?
      body
    end

    def progress_body(job_id:, seq:, job_name: "TestJob", user_id: "42", message: "working", percent: nil, stage: nil)
      {
        "version" => 1, "job_id" => job_id, "user_id" => user_id.to_s, "job_name" => job_name, "agent_name" => "test_agent",
        "seq" => seq, "stage" => stage, "message" => message, "percent" => percent, "timestamp" => Time.now.utc.iso8601(3)
      }
    end

    # The headers of one callback attempt carrying `body` (a String of JSON, sent as is).
    def callback_headers(event, body, delivery_id: "dlv_#{SecureRandom.hex(12)}", now: Time.now.to_i, ttl: 300,
                         config: AgentSidecar.config, key: nil, algorithm: nil, kid: nil)
      doc = JSON.parse(body)
      claims = {
        iss: config.issuer, aud: config.audience, sub: doc["job_id"], iat: now, exp: now + ttl, jti: delivery_id,
        event: event.to_s, job_name: doc["job_name"], status: doc["status"] || "running",
        body_sha256: OpenSSL::Digest::SHA256.hexdigest(body)
      }
      token = if key
                JWT.encode(claims, key, algorithm || "RS256", kid ? { kid: kid } : {})
              else
                raise ArgumentError, "AgentSidecar.config.secret is not set: pass key:" if config.secret.blank?

                JWT.encode(claims, config.secret, "HS256")
              end
      headers = {
        "Authorization" => "Bearer #{token}", "Content-Type" => "application/json",
        "Idempotency-Key" => delivery_id, "webhook-id" => delivery_id
      }
      secrets = Array(config.webhook_secrets).reject(&:blank?)
      if secrets.any?
        signed = "#{delivery_id}.#{now}.#{body}"
        headers["webhook-timestamp"] = now.to_s
        headers["webhook-signature"] = secrets.map do |s|
          "v1,#{Base64.strict_encode64(OpenSSL::HMAC.digest('SHA256', Base64.decode64(s.delete_prefix('whsec_')), signed))}"
        end.join(" ")
      end
      headers
    end

    # The `sig` of a completion body (no exp: it is verifiable long after delivery).
    def body_sig(body, config)
      JWT.encode({
                   iss: config.issuer, aud: config.audience, sub: body["job_id"], iat: Time.now.to_i,
                   job_name: body["job_name"], status: body["status"], user_id: body["user_id"]
                 }, config.secret, "HS256")
    end

    # In an ActionDispatch::IntegrationTest: posts a signed completion to the engine. Returns the
    # body sent. Pass `delivery_id:` twice to send a re-delivery.
    def post_agent_sidecar_completion(delivery_id: "dlv_#{SecureRandom.hex(12)}", body: nil, **fields)
      body ||= AgentSidecar::Testing.completion_body(**fields)
      json = JSON.generate(body)
      post "#{AgentSidecar::Engine.mount_path}/completed/#{body['user_id']}", params: json,
                                                                              headers: AgentSidecar::Testing.callback_headers("completion", json, delivery_id: delivery_id)
      body
    end

    # In an ActionDispatch::IntegrationTest: posts a signed progress callback.
    def post_agent_sidecar_progress(**fields)
      body = AgentSidecar::Testing.progress_body(**fields)
      json = JSON.generate(body)
      post "#{AgentSidecar::Engine.mount_path}/update/#{body['user_id']}", params: json,
                                                                           headers: AgentSidecar::Testing.callback_headers("progress", json)
      body
    end
  end
end
