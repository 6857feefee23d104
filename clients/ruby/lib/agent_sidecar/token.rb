require "jwt"
require "securerandom"

module AgentSidecar
  # Inbound tokens: what the sidecar's [server.auth] accepts today, an HS256 JWT with `iss`,
  # `aud`, `sub`, `iat`, `nbf`, `exp`, and optionally the scope claim (`agents`: the agents the
  # bearer may trigger; an empty list triggers none).
  module Token
    ROLES = %i[read_only operator].freeze

    module_function

    # The bearer token of one API request, or nil when the sidecar asks for none.
    def for_request(config)
      if config.api_secret.present?
        mint(config, subject: "rails", ttl: config.api_token_ttl)
      elsif config.sidecar_token.respond_to?(:call)
        config.sidecar_token.call
      else
        config.sidecar_token.presence
      end
    end

    def mint(config, subject:, ttl:, extra: {})
      raise Error, "api_secret is not set: cannot mint a token for the sidecar" if config.api_secret.blank?

      now = Time.now.to_i
      claims = {
        iss: config.api_issuer, aud: config.api_audience, sub: subject, iat: now, nbf: now,
        exp: now + [ttl.to_i, 1].max, jti: SecureRandom.uuid
      }.merge(extra)
      JWT.encode(claims, config.api_secret, "HS256")
    end

    # A dashboard token. The sidecar has no roles yet: `role` is carried as a claim for the
    # dashboard to come, and a read-only token is scoped to no agent (`agents: []`), which the
    # sidecar enforces today by refusing every trigger made with it.
    def dashboard(config, role:, ttl:, subject:)
      role = role.to_sym
      raise ArgumentError, "role must be one of #{ROLES.join(', ')}" unless ROLES.include?(role)

      extra = { role: role.to_s }
      extra[:agents] = [] if role == :read_only
      mint(config, subject: subject, ttl: ttl, extra: extra)
    end
  end
end
