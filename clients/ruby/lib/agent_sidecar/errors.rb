module AgentSidecar
  # Every error this gem raises.
  class Error < StandardError; end

  # A callback whose signature, claims or body do not check out (answered 401).
  class Unauthorized < Error; end

  # A callback that could not be checked right now (the JWKS is unreachable): answered 503 with
  # Retry-After, so the sidecar retries instead of dead-lettering.
  class Unavailable < Error; end

  # The sidecar answered a request with a 4xx: `problem` is its RFC 9457 body and `errors` its
  # `errors[]` ({pointer, detail, source?} per failing field).
  class Refused < Error
    attr_reader :status, :problem

    def initialize(status, problem)
      @status = status
      @problem = problem.is_a?(Hash) ? problem : {}
      fields = errors.map { |e| "#{e['source']} #{e['pointer']}: #{e['detail']}".strip }
      super("agent-sidecar answered #{status}: #{@problem['detail'] || @problem['title']} #{fields.join('; ')}".strip)
    end

    def errors
      Array(@problem["errors"])
    end
  end

  # The sidecar could not be reached, or kept answering 5xx/503 after every retry.
  class SidecarUnavailable < Error
    attr_reader :status

    def initialize(message, status: nil)
      @status = status
      super(message)
    end
  end
end
