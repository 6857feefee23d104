module AgentSidecar
  # The callback could not be checked right now (the JWKS is unreachable): answered 503 with
  # Retry-After, so the sidecar retries instead of dead-lettering.
  class Unavailable < StandardError; end
end
