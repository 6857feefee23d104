require "json"
require "net/http"
require "openssl"
require "fileutils"
require "securerandom"

module AgentSidecar
  # Starts agent jobs: writes <shared_root>/<job_id>/input/ (the files, then manifest.json v2
  # with each file's size and SHA-256, both by rename so the sidecar never reads half a file),
  # then POSTs /agents/trigger, or in folder mode writes input/trigger.json and reads the answer
  # from output/trigger-response.json. The job folder is complete before the sidecar hears of it.
  class Client
    # The sidecar refused the trigger; `problem` is its RFC 9457 body.
    class Refused < StandardError
      attr_reader :status, :problem

      def initialize(status, problem)
        @status = status
        @problem = problem
        fields = Array(problem["errors"]).map { |e| "#{e['source']} #{e['pointer']}: #{e['detail']}" }
        super("agent-sidecar answered #{status}: #{problem['detail'] || problem['title']} #{fields.join('; ')}".strip)
      end
    end

    def initialize(config = AgentSidecar.config)
      @config = config
    end

    # Returns the 202 body ({"job_id", "status", "status_url"}). `inputs` maps file names under
    # input/ to their content. Raises Refused on any other answer.
    def trigger(agent_name:, job_name:, user_id:, inputs: {}, params: {}, job_id: SecureRandom.uuid, priority: nil)
      job_id = checked_job_id(job_id)
      write_job_folder(job_id, user_id: user_id, agent_name: agent_name, job_name: job_name, params: params, inputs: inputs)
      body = {
        job_id: job_id, user_id: user_id.to_s, agent_name: agent_name, job_name: job_name, params: params,
        callback_urls: {
          progress: "#{@config.callback_base_url}/agents/update/#{user_id}",
          completion: "#{@config.callback_base_url}/agents/completed/#{user_id}"
        }
      }
      body[:priority] = priority if priority
      @config.trigger_mode == :folder ? trigger_by_folder(job_id, body) : post("/agents/trigger", body)
    end

    # POST /jobs/{id}/cancel: the sidecar stops the agent and sends a `canceled` completion.
    def cancel(job_id)
      post("/jobs/#{checked_job_id(job_id)}/cancel", nil, accept: [200, 202])
    end

    private

    # Folder mode ([storage] folder_triggers = true on the sidecar): input/trigger.json instead
    # of the POST; the sidecar answers in output/trigger-response.json, same body as the API.
    def trigger_by_folder(job_id, body)
      write_atomically(File.join(@config.shared_root, job_id, "input", "trigger.json"), JSON.generate(body))
      answer = JSON.parse(wait_for_file(File.join(@config.shared_root, job_id, "output", "trigger-response.json")))
      raise Refused.new(answer["status"], answer) if answer["status"].is_a?(Integer)

      answer
    end

    def wait_for_file(path)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + @config.folder_answer_timeout
      until File.file?(path)
        raise Timeout::Error, "no answer in #{path} after #{@config.folder_answer_timeout}s" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        sleep 0.05
      end
      File.read(path)
    end

    # Job ids and input names become paths: only a UUID, and only plain relative names.
    def checked_job_id(job_id)
      raise ArgumentError, "job_id must be a UUID" unless AgentSidecar::UUID.match?(job_id.to_s)

      job_id.to_s.downcase
    end

    def input_path(input, name)
      parts = name.to_s.split("/")
      if name.to_s.empty? || name.to_s.start_with?("/") || name.to_s.match?(/[\\\0]/) || parts.any? { |p| p.empty? || p == "." || p == ".." }
        raise ArgumentError, "input name #{name.inspect} is not a plain relative path"
      end

      File.join(input, *parts)
    end

    def write_job_folder(job_id, user_id:, agent_name:, job_name:, params:, inputs:)
      input = File.join(@config.shared_root, job_id, "input")
      FileUtils.mkdir_p(input)
      files = inputs.map do |name, content|
        write_atomically(input_path(input, name), content)
        { path: name, bytes: content.bytesize, sha256: OpenSSL::Digest::SHA256.hexdigest(content) }
      end
      manifest = {
        schema_version: 2, job_id: job_id, user_id: user_id.to_s, agent_name: agent_name, job_name: job_name,
        params: params, inputs: files, created_at: Time.now.utc.iso8601(3)
      }
      write_atomically(File.join(input, "manifest.json"), JSON.generate(manifest))
    end

    def write_atomically(path, content)
      FileUtils.mkdir_p(File.dirname(path))
      tmp = "#{path}.tmp-#{SecureRandom.hex(4)}"
      File.binwrite(tmp, content)
      File.rename(tmp, path)
    end

    def post(path, body, accept: [202])
      uri = URI.join(@config.sidecar_url, path)
      request = Net::HTTP::Post.new(uri, "Content-Type" => "application/json")
      token = @config.sidecar_token.respond_to?(:call) ? @config.sidecar_token.call : @config.sidecar_token
      request["Authorization"] = "Bearer #{token}" if token
      request.body = JSON.generate(body) if body
      response = Net::HTTP.start(uri.host, uri.port, use_ssl: uri.scheme == "https") { |http| http.request(request) }
      parsed = response.body.to_s.empty? ? {} : JSON.parse(response.body)
      raise Refused.new(response.code.to_i, parsed) unless accept.include?(response.code.to_i)

      parsed
    end
  end
end
