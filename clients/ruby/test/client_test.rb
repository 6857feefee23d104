require "test_helper"
require "socket"

# The client against a small HTTP server on a free port that answers from a script and records
# each request (the real sidecar is exercised by the Rust contract suite).
class ClientTest < Minitest::Test
  include AgentSidecarTest

  class ScriptedServer
    attr_reader :requests, :port

    def initialize(answers)
      @answers = answers
      @requests = Queue.new
      @server = TCPServer.new("127.0.0.1", 0)
      @port = @server.addr[1]
      @thread = Thread.new { serve }
    end

    def stop
      @thread.kill
      @server.close
    end

    private

    def serve
      @answers.each do |status, headers, body|
        socket = @server.accept
        head = socket.gets("\r\n\r\n")
        length = head[/content-length: (\d+)/i, 1].to_i
        @requests << { head: head, body: socket.read(length) }
        extra = headers.map { |k, v| "#{k}: #{v}\r\n" }.join
        socket.write("HTTP/1.1 #{status} X\r\nContent-Type: application/json\r\nContent-Length: #{body.bytesize}\r\n#{extra}Connection: close\r\n\r\n#{body}")
        socket.close
      end
    end
  end

  def setup
    configure_sidecar
    @root = Dir.mktmpdir
    AgentSidecar.configure do |c|
      c.shared_root = @root
      c.callback_base_url = "http://rails.test"
      c.api_secret = "api-secret-0123456789abcdef0123456789"
      c.max_retry_after = 1
    end
  end

  def teardown
    @server&.stop
    FileUtils.rm_rf(@root)
  end

  def serve(*answers)
    @server = ScriptedServer.new(answers)
    AgentSidecar.config.sidecar_url = "http://127.0.0.1:#{@server.port}"
  end

  def trigger(job_id = SecureRandom.uuid)
    AgentSidecar::Client.new.trigger(agent: "summarizer_v2", job_name: "CountingJob", user: 42, job_id: job_id, inputs: { "a.txt" => "a" })
  end

  def test_a_503_is_retried_after_its_retry_after_with_the_same_body
    job_id = SecureRandom.uuid
    serve([503, { "Retry-After" => "0" }, '{"title":"draining"}'], [202, {}, %({"job_id":"#{job_id}","status":"queued"})])
    assert_equal "queued", trigger(job_id)["status"]
    first, second = @server.requests.pop, @server.requests.pop
    assert_equal first[:body], second[:body], "a retry sends the same body"
    body = JSON.parse(first[:body])
    assert_equal "http://rails.test/agents/completed/42", body["callback_urls"]["completion"]
    assert File.file?(File.join(@root, job_id, "input", "manifest.json")), "the folder is written before the POST"
  end

  def test_each_request_carries_a_fresh_short_lived_token
    serve([200, {}, "{}"])
    AgentSidecar.status(SecureRandom.uuid)
    token = @server.requests.pop[:head][/authorization: Bearer (\S+)/i, 1]
    claims, = JWT.decode(token, AgentSidecar.config.api_secret, true, algorithms: ["HS256"], aud: "agent-sidecar", verify_aud: true)
    assert_equal "rails", claims["iss"]
    assert_operator claims["exp"] - claims["iat"], :<=, 60
  end

  def test_a_4xx_raises_refused_carrying_the_problems_errors
    problem = { title: "Unprocessable", status: 422, errors: [{ pointer: "/agent_name", detail: "unknown agent" }] }
    serve([422, {}, JSON.generate(problem)])
    error = assert_raises(AgentSidecar::Refused) { trigger }
    assert_equal 422, error.status
    assert_equal ["/agent_name"], error.errors.map { |e| e["pointer"] }
    assert_match(/unknown agent/, error.message)
  end

  def test_a_sidecar_that_stays_unavailable_raises_after_the_last_attempt
    serve(*Array.new(3) { [503, { "Retry-After" => "0" }, "{}"] })
    assert_raises(AgentSidecar::SidecarUnavailable) { trigger }
    assert_equal 3, @server.requests.size
  end

  def test_the_sse_reader_yields_each_event
    stream = "id: 1\nevent: progress\ndata: {\"seq\":1}\n\n: keep-alive\n\nid: 2\nevent: completed\ndata: {\"status\":\"completed\"}\n\n"
    serve([200, { "Content-Type" => "text/event-stream" }, stream])
    events = []
    AgentSidecar.events(SecureRandom.uuid) { |e| events << e }
    assert_equal [["progress", 1], ["completed", nil]], events.map { |e| [e[:event], e[:data]["seq"]] }
  end

  def test_a_read_only_dashboard_url_may_trigger_no_agent
    AgentSidecar.config.dashboard_base_url = "https://sidecar.example"
    url = AgentSidecar.dashboard_url(role: :read_only)
    assert url.start_with?("https://sidecar.example/ui#token=")
    claims, = JWT.decode(url.split("token=").last, AgentSidecar.config.api_secret, true, algorithms: ["HS256"])
    assert_equal [[], "read_only"], claims.values_at("agents", "role")
    operator, = JWT.decode(AgentSidecar.dashboard_url(role: :operator).split("token=").last, nil, false)
    refute operator.key?("agents")
    assert_raises(ArgumentError) { AgentSidecar.dashboard_url(role: :root) }
  end
end
