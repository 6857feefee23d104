require "fileutils"
require "json"
require "openssl"
require "pathname"
require "securerandom"
require "time"

module AgentSidecar
  # Writes <shared_root>/<job_id>/input/: each input (content, or a file copied or hard-linked
  # in), then manifest.json (schema v2: each file's path, bytes and sha256), every file by
  # rename so the sidecar never reads half of one. The folder is complete before the sidecar
  # hears of the job.
  class JobFolder
    attr_reader :job_id, :root

    def initialize(shared_root, job_id, input_mode: :copy)
      @job_id = self.class.checked_job_id(job_id)
      @root = File.join(shared_root.to_s, @job_id)
      @input_mode = input_mode.to_sym
    end

    # Job ids become paths: only a UUID.
    def self.checked_job_id(job_id)
      raise ArgumentError, "job_id must be a UUID" unless AgentSidecar::UUID.match?(job_id.to_s)

      job_id.to_s.downcase
    end

    def input_dir
      File.join(@root, "input")
    end

    # `inputs` maps names under input/ to a String (the content) or a Pathname/File (a file to
    # copy or link). Returns the manifest written.
    def write(user_id:, agent_name:, job_name:, params:, inputs:)
      FileUtils.mkdir_p(input_dir)
      files = inputs.map { |name, source| write_input(name.to_s, source) }
      manifest = {
        schema_version: 2, job_id: @job_id, user_id: user_id.to_s, agent_name: agent_name.to_s,
        job_name: job_name.to_s, params: params, inputs: files, created_at: Time.now.utc.iso8601(3)
      }
      self.class.write_atomically(File.join(input_dir, "manifest.json"), JSON.generate(manifest))
      manifest
    end

    def self.write_atomically(path, content)
      FileUtils.mkdir_p(File.dirname(path))
      tmp = "#{path}.tmp-#{SecureRandom.hex(4)}"
      File.binwrite(tmp, content)
      File.rename(tmp, path)
    end

    private

    def write_input(name, source)
      path = input_path(name)
      FileUtils.mkdir_p(File.dirname(path))
      if source.is_a?(Pathname) || source.is_a?(File)
        place_file(source.to_path, path)
      else
        self.class.write_atomically(path, source.to_s)
      end
      { path: name, bytes: File.size(path), sha256: OpenSSL::Digest::SHA256.file(path).hexdigest }
    end

    def place_file(from, path)
      raise ArgumentError, "input #{from} is not a regular file" unless File.file?(from) && !File.symlink?(from)

      tmp = "#{path}.tmp-#{SecureRandom.hex(4)}"
      @input_mode == :link ? File.link(from, tmp) : FileUtils.cp(from, tmp)
      File.rename(tmp, path)
    end

    # Only plain relative names: no absolute path, `..`, `.`, empty part, backslash or NUL.
    def input_path(name)
      parts = name.split("/")
      if name.empty? || name.start_with?("/") || name.match?(/[\\\0]/) || parts.any? { |p| p.empty? || p == "." || p == ".." }
        raise ArgumentError, "input name #{name.inspect} is not a plain relative path"
      end

      File.join(input_dir, *parts)
    end
  end
end
