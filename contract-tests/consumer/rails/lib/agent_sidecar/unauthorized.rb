module AgentSidecar
  # A callback whose signature, claims or body do not check out (answered 401).
  class Unauthorized < StandardError; end
end
