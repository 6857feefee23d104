require "test_helper"

# AgentSidecar::Testing signs as the sidecar does; the Verifier accepts exactly that.
class VerifierTest < Minitest::Test
  include AgentSidecarTest

  def setup
    configure_sidecar
    AgentSidecar.config.webhook_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
    @body = JSON.generate(AgentSidecar::Testing.completion_body(job_name: "CountingJob"))
  end

  def verify(headers, body = @body)
    AgentSidecar::Verifier.new.verify!(
      authorization: headers["Authorization"], body: body, event: "completion",
      headers: headers.slice("webhook-id", "webhook-timestamp", "webhook-signature")
    )
  end

  def test_accepts_a_callback_signed_as_the_sidecar_signs_it
    claims = verify(AgentSidecar::Testing.callback_headers("completion", @body, delivery_id: "dlv_1"))
    assert_equal "dlv_1", claims["jti"]
    assert_equal JSON.parse(@body)["job_id"], claims["sub"]
  end

  def test_refuses_a_tampered_body
    headers = AgentSidecar::Testing.callback_headers("completion", @body)
    error = assert_raises(AgentSidecar::Unauthorized) { verify(headers, @body.sub("completed", "failed")) }
    assert_match(/body_sha256/, error.message)
  end

  def test_refuses_an_expired_token_a_wrong_audience_and_a_progress_token
    expired = AgentSidecar::Testing.callback_headers("completion", @body, now: Time.now.to_i - 3600, ttl: 60)
    assert_match(/expired/, assert_raises(AgentSidecar::Unauthorized) { verify(expired) }.message)
    other = AgentSidecar::Configuration.new.tap do |c|
      c.secret = SECRET
      c.audience = "someone-else"
      c.webhook_secrets = AgentSidecar.config.webhook_secrets
    end
    assert_raises(AgentSidecar::Unauthorized) { verify(AgentSidecar::Testing.callback_headers("completion", @body, config: other)) }
    assert_raises(AgentSidecar::Unauthorized) { verify(AgentSidecar::Testing.callback_headers("progress", @body)) }
  end

  def test_refuses_a_missing_or_wrong_webhook_signature
    headers = AgentSidecar::Testing.callback_headers("completion", @body)
    assert_raises(AgentSidecar::Unauthorized) { verify(headers.except("webhook-signature")) }
    assert_raises(AgentSidecar::Unauthorized) { verify(headers.merge("webhook-signature" => "v1,AAAA")) }
  end

  def test_refuses_the_none_algorithm
    token = JWT.encode({ sub: "x" }, nil, "none")
    assert_raises(AgentSidecar::Unauthorized) { verify({ "Authorization" => "Bearer #{token}" }) }
  end
end
