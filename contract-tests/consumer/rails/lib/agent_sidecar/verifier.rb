require "jwt"
require "json"
require "net/http"
require "openssl"
require "base64"

module AgentSidecar
  # Verifies a callback: the `Authorization: Bearer` JWT (HS256 with the shared secret, or
  # RS256/ES256 against the sidecar's JWKS), its `iss`, `aud`, `exp`, `event`, and that
  # `body_sha256` is the digest of the exact body; then the Standard Webhooks headers when
  # secrets are configured. Raises Unauthorized naming what failed.
  class Verifier
    ASYMMETRIC = %w[RS256 ES256].freeze
    REQUIRED = %w[iss aud sub iat exp jti event job_name status body_sha256].freeze

    def initialize(config = AgentSidecar.config)
      @config = config
      @jwks_mutex = Mutex.new
    end

    # Returns the verified claims.
    def verify!(authorization:, body:, event:, headers: {})
      token = authorization.to_s[/\ABearer\s+(\S+)\z/, 1] or raise Unauthorized, "missing bearer token"
      claims = decode(token)
      raise Unauthorized, "token is for a #{claims['event']} callback" unless claims["event"] == event
      unless ActiveSupport::SecurityUtils.secure_compare(claims["body_sha256"].to_s, OpenSSL::Digest::SHA256.hexdigest(body))
        raise Unauthorized, "body_sha256 does not match the body"
      end
      verify_webhook!(headers, body) if Array(@config.webhook_secrets).any?
      claims
    end

    private

    def decode(token)
      alg = JWT.decode(token, nil, false).last["alg"]
      options = {
        algorithms: [alg], iss: @config.issuer, verify_iss: true, aud: @config.audience,
        verify_aud: true, exp_leeway: @config.leeway, required_claims: REQUIRED
      }
      if alg == "HS256" && @config.secret.present?
        JWT.decode(token, @config.secret, true, options).first
      elsif ASYMMETRIC.include?(alg) && @config.jwks_url.present?
        JWT.decode(token, nil, true, options.merge(jwks: method(:jwks))).first
      else
        raise Unauthorized, "algorithm #{alg.inspect} is not accepted"
      end
    rescue JWT::ExpiredSignature
      raise Unauthorized, "token expired"
    rescue JWT::DecodeError => e
      raise Unauthorized, "invalid token: #{e.message}"
    end

    # The JWKS, fetched once and again when a token names a kid it lacks (key rotation).
    def jwks(options = {})
      @jwks_mutex.synchronize do
        @jwks = nil if options[:kid_not_found]
        @jwks ||= fetch_jwks
      end
    end

    def fetch_jwks
      response = Net::HTTP.get_response(URI(@config.jwks_url))
      raise Unauthorized, "JWKS unavailable (#{response.code})" unless response.is_a?(Net::HTTPSuccess)

      JSON.parse(response.body)
    rescue SystemCallError, IOError, Timeout::Error, JSON::ParserError => e
      raise Unauthorized, "JWKS unavailable: #{e.class}"
    end

    # Standard Webhooks: v1,<base64 HMAC-SHA256 of "id.timestamp.body"> with any configured secret.
    def verify_webhook!(headers, body)
      id, timestamp, signatures = headers.values_at("webhook-id", "webhook-timestamp", "webhook-signature")
      raise Unauthorized, "missing webhook-id, webhook-timestamp or webhook-signature" if [id, timestamp, signatures].any?(&:blank?)
      raise Unauthorized, "webhook-timestamp is too old or in the future" if (Time.now.to_i - timestamp.to_i).abs > @config.leeway + 300

      signed = "#{id}.#{timestamp}.#{body}"
      expected = Array(@config.webhook_secrets).map do |secret|
        key = Base64.decode64(secret.delete_prefix("whsec_"))
        Base64.strict_encode64(OpenSSL::HMAC.digest("SHA256", key, signed))
      end
      given = signatures.split(" ").filter_map { |s| s.split(",", 2).then { |v, sig| sig if v == "v1" } }
      ok = given.any? { |sig| expected.any? { |e| ActiveSupport::SecurityUtils.secure_compare(sig, e) } }
      raise Unauthorized, "webhook-signature does not match" unless ok
    end
  end
end
