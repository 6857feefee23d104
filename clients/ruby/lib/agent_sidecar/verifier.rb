require "jwt"
require "json"
require "net/http"
require "openssl"
require "base64"
require "active_support/security_utils"

module AgentSidecar
  # Verifies a callback: the `Authorization: Bearer` JWT (HS256 with the shared secret, or
  # RS256/ES256 against the sidecar's JWKS), its `iss`, `aud`, `exp`, `event`, and that
  # `body_sha256` is the digest of the exact body; then the Standard Webhooks headers when
  # secrets are configured. Raises Unauthorized naming what failed.
  class Verifier
    ASYMMETRIC = { "RS256" => "RSA", "ES256" => "EC" }.freeze
    # Least time between two JWKS fetches caused by an unknown kid (anyone can send one).
    REFETCH_INTERVAL = 30
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

    # The algorithm is tied to the key type: HS256 only with the secret, RS256/ES256 only with a
    # JWK of the matching kty from the JWKS; anything else (`none` included) is refused.
    def decode(token)
      header = JWT.decode(token, nil, false).last
      alg = header.is_a?(Hash) ? header["alg"] : nil
      options = {
        algorithms: [alg], iss: @config.issuer, verify_iss: true, aud: @config.audience,
        verify_aud: true, exp_leeway: @config.leeway, required_claims: REQUIRED
      }
      if alg == "HS256" && @config.secret.present?
        JWT.decode(token, @config.secret, true, options).first
      elsif ASYMMETRIC.key?(alg) && @config.jwks_url.present?
        JWT.decode(token, nil, true, options.merge(jwks: ->(opts) { jwks_of(ASYMMETRIC[alg], opts) })).first
      else
        raise Unauthorized, "algorithm #{alg.inspect} is not accepted"
      end
    rescue Unauthorized, Unavailable
      raise
    rescue JWT::ExpiredSignature
      raise Unauthorized, "token expired"
    rescue JWT::DecodeError => e
      raise Unauthorized, "invalid token: #{e.message}"
    rescue StandardError => e
      raise Unauthorized, "invalid token (#{e.class})"
    end

    # The JWKS keys of type `kty`, fetched once and again when a token names an unknown kid (key
    # rotation), at most every REFETCH_INTERVAL seconds.
    def jwks_of(kty, options)
      @jwks_mutex.synchronize do
        stale = options[:kid_not_found] && (@fetched_at.nil? || monotonic - @fetched_at > REFETCH_INTERVAL)
        if @jwks.nil? || stale
          @jwks = fetch_jwks
          @fetched_at = monotonic
        end
      end
      { "keys" => Array(@jwks["keys"]).select { |k| k["kty"] == kty } }
    end

    def fetch_jwks
      uri = URI(@config.jwks_url)
      response = Net::HTTP.start(uri.host, uri.port, use_ssl: uri.scheme == "https", open_timeout: 3, read_timeout: 3) do |http|
        http.request(Net::HTTP::Get.new(uri))
      end
      raise Unavailable, "JWKS answered #{response.code}" unless response.is_a?(Net::HTTPSuccess)

      JSON.parse(response.body)
    rescue StandardError => e
      raise e if e.is_a?(Unavailable)

      raise Unavailable, "JWKS unavailable: #{e.class}"
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
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
