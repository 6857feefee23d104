require "json"
require "net/http"
require "securerandom"
require "time"
require "uri"

module AgentSidecar
  # The sidecar's HTTP API. Every request carries a fresh short-lived bearer token (when the
  # sidecar asks for one), has connect and read timeouts, and is retried on a timeout, a refused
  # connection, a 502/504 and a 503 (after its Retry-After, bounded by max_retry_after). A
  # trigger's body is built once, so a retry after a timeout sends the same bytes and the
  # sidecar answers it from the job it already stored (same job_id, same body: 202 again).
  # A 4xx raises Refused with the problem's errors[]; exhausted retries raise SidecarUnavailable.
  class Client
    RETRYABLE = [Net::OpenTimeout, Net::ReadTimeout, Errno::ECONNREFUSED, Errno::ECONNRESET, EOFError, Errno::EPIPE].freeze

    def initialize(config = AgentSidecar.config)
      @config = config
    end

    # Writes the job folder, then starts the job. Returns the 202 body
    # ({"job_id", "status", "status_url"}). `user` is a user record (its id is used) or an id;
    # `inputs` maps names under input/ to content or files (see JobFolder); `callback_urls`
    # defaults to the engine's routes under callback_base_url.
    def trigger(agent:, job_name:, user:, params: {}, inputs: {}, priority: nil, callback_urls: nil, job_id: SecureRandom.uuid)
      user_id = (user.respond_to?(:id) ? user.id : user).to_s
      folder = JobFolder.new(@config.shared_root, job_id, input_mode: @config.input_mode)
      folder.write(user_id: user_id, agent_name: agent, job_name: job_name, params: params, inputs: inputs)
      body = {
        job_id: folder.job_id, user_id: user_id, agent_name: agent.to_s, job_name: job_name.to_s, params: params,
        callback_urls: callback_urls || default_callback_urls(user_id)
      }
      body[:priority] = priority.to_s if priority
      remember(folder.job_id, user_id, job_name)
      if @config.trigger_mode.to_sym == :folder
        trigger_by_folder(folder, body)
      else
        request(:post, "/agents/trigger", body: body, accept: [202])
      end
    end

    # GET /jobs/{id}.
    def status(job_id)
      request(:get, "/jobs/#{JobFolder.checked_job_id(job_id)}")
    end

    # POST /jobs/{id}/cancel: the sidecar stops the agent and sends a `canceled` completion.
    def cancel(job_id)
      request(:post, "/jobs/#{JobFolder.checked_job_id(job_id)}/cancel", accept: [200, 202])
    end

    # GET /jobs with the sidecar's filters (state:, agent_name:, limit:, cursor: ...).
    def list(**filters)
      query = filters.compact.empty? ? "" : "?#{URI.encode_www_form(filters.compact)}"
      request(:get, "/jobs#{query}")
    end

    # POST /deliveries/{id}/redrive: a dead-lettered callback is sent again.
    def redrive(delivery_id)
      raise ArgumentError, "delivery id #{delivery_id.inspect} is not plain" unless delivery_id.to_s.match?(/\A[A-Za-z0-9_-]+\z/)

      request(:post, "/deliveries/#{delivery_id}/redrive", accept: [200, 202])
    end

    # GET /jobs/{id}/events (server-sent events): yields {id:, event:, data:} (data parsed
    # as JSON when it is JSON) until the sidecar ends the stream.
    def events(job_id)
      uri = URI.join(@config.sidecar_url, "/jobs/#{JobFolder.checked_job_id(job_id)}/events")
      get = Net::HTTP::Get.new(uri, "Accept" => "text/event-stream")
      authorize(get)
      Net::HTTP.start(uri.host, uri.port, use_ssl: uri.scheme == "https", open_timeout: @config.open_timeout, read_timeout: nil) do |http|
        http.request(get) do |response|
          raise Refused.new(response.code.to_i, parse(response.body)) unless response.code.to_i == 200

          parser = SseParser.new { |event| yield event }
          response.read_body { |chunk| parser << chunk }
        end
      end
    end

    private

    def default_callback_urls(user_id)
      base = @config.callback_base_url or raise Error, "callback_base_url is not set: pass callback_urls:"
      if defined?(AgentSidecar::Engine) && AgentSidecar::Engine.respond_to?(:callback_urls)
        AgentSidecar::Engine.callback_urls(base, user_id)
      else
        { progress: "#{base}/agents/update/#{user_id}", completion: "#{base}/agents/completed/#{user_id}" }
      end
    end

    # The job's row, so ActionCable can tell whose job it is before the first callback.
    def remember(job_id, user_id, job_name)
      return unless defined?(ActiveRecord::Base) && defined?(AgentSidecar::Job)

      AgentSidecar::Job.remember(job_id, user_id: user_id, job_name: job_name.to_s)
    end

    # Folder mode ([storage] folder_triggers = true): input/trigger.json instead of the POST;
    # the sidecar answers in output/trigger-response.json with the API's body.
    def trigger_by_folder(folder, body)
      JobFolder.write_atomically(File.join(folder.input_dir, "trigger.json"), JSON.generate(body))
      answer = JSON.parse(wait_for_file(File.join(folder.root, "output", "trigger-response.json")))
      raise Refused.new(answer["status"], answer) if answer["status"].is_a?(Integer)

      answer
    end

    def wait_for_file(path)
      deadline = monotonic + @config.folder_answer_timeout
      until File.file?(path)
        raise SidecarUnavailable, "no answer in #{path} after #{@config.folder_answer_timeout}s" if monotonic > deadline

        sleep 0.05
      end
      File.read(path)
    end

    def request(method, path, body: nil, accept: [200])
      uri = URI.join(@config.sidecar_url, path)
      payload = body && JSON.generate(body)
      attempt = 0
      loop do
        attempt += 1
        begin
          response = send_once(method, uri, payload)
        rescue *RETRYABLE => e
          raise SidecarUnavailable, "agent-sidecar unreachable (#{e.class}) after #{attempt} attempts" if attempt >= @config.max_attempts

          sleep(backoff(attempt))
          next
        end
        code = response.code.to_i
        return parse(response.body) if accept.include?(code)

        if [502, 503, 504].include?(code)
          raise SidecarUnavailable.new("agent-sidecar answered #{code} after #{attempt} attempts", status: code) if attempt >= @config.max_attempts

          sleep(retry_after(response) || backoff(attempt))
          next
        end
        raise SidecarUnavailable.new("agent-sidecar answered #{code}", status: code) if code >= 500

        raise Refused.new(code, parse(response.body))
      end
    end

    def send_once(method, uri, payload)
      request = (method == :post ? Net::HTTP::Post : Net::HTTP::Get).new(uri, "Accept" => "application/json")
      if payload
        request["Content-Type"] = "application/json"
        request.body = payload
      end
      authorize(request)
      Net::HTTP.start(uri.host, uri.port, use_ssl: uri.scheme == "https",
                                           open_timeout: @config.open_timeout, read_timeout: @config.read_timeout) do |http|
        http.request(request)
      end
    end

    def authorize(request)
      token = Token.for_request(@config)
      request["Authorization"] = "Bearer #{token}" if token
    end

    # Seconds to wait from a Retry-After (delay-seconds or an HTTP date), within bounds.
    def retry_after(response)
      value = response["Retry-After"].to_s.strip
      return nil if value.empty?

      seconds = value.match?(/\A\d+\z/) ? value.to_i : (Time.httpdate(value) - Time.now)
      seconds.clamp(0, @config.max_retry_after)
    rescue ArgumentError
      nil
    end

    def backoff(attempt)
      [0.2 * (2**(attempt - 1)), @config.max_retry_after].min
    end

    def parse(text)
      text.to_s.empty? ? {} : JSON.parse(text)
    rescue JSON::ParserError
      { "detail" => text.to_s[0, 200] }
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    # text/event-stream, line by line (WHATWG HTML, "event stream interpretation").
    class SseParser
      def initialize(&on_event)
        @on_event = on_event
        @buffer = +""
        @event = {}
      end

      def <<(chunk)
        @buffer << chunk
        while (line = @buffer.slice!(/\A[^\n]*\n/))
          line = line.chomp.delete_suffix("\r")
          line.empty? ? dispatch : field(line)
        end
      end

      private

      def field(line)
        return if line.start_with?(":")

        name, value = line.split(":", 2)
        value = value.to_s.delete_prefix(" ")
        case name
        when "data" then (@event[:data] ||= +"") << (@event[:data].empty? ? value : "\n#{value}")
        when "id", "event" then @event[name.to_sym] = value
        end
      end

      def dispatch
        return @event = {} unless @event.key?(:data)

        data = @event[:data]
        parsed = begin
          JSON.parse(data)
        rescue JSON::ParserError
          data
        end
        @on_event.call({ id: @event[:id], event: @event[:event] || "message", data: parsed })
        @event = {}
      end
    end
  end
end
