require "test_helper"

class JobFolderTest < Minitest::Test
  def setup
    @root = Dir.mktmpdir
    @job_id = SecureRandom.uuid
  end

  def teardown
    FileUtils.rm_rf(@root)
  end

  def test_writes_the_inputs_then_a_v2_manifest_with_their_sizes_and_digests
    source = File.join(@root, "source.csv")
    File.write(source, "a,b\n1,2\n")
    manifest = AgentSidecar::JobFolder.new(@root, @job_id).write(
      user_id: 42, agent_name: "summarizer_v2", job_name: "ReportCompileJob", params: { "n" => 1 },
      inputs: { "notes.txt" => "hello", "data/table.csv" => Pathname(source) }
    )
    written = JSON.parse(File.read(File.join(@root, @job_id, "input", "manifest.json")))
    assert_equal 2, written["schema_version"]
    assert_equal "42", written["user_id"]
    assert_equal [["notes.txt", 5, OpenSSL::Digest::SHA256.hexdigest("hello")],
                  ["data/table.csv", 8, OpenSSL::Digest::SHA256.hexdigest("a,b\n1,2\n")]],
                 written["inputs"].map { |i| i.values_at("path", "bytes", "sha256") }
    assert_equal "a,b\n1,2\n", File.read(File.join(@root, @job_id, "input", "data", "table.csv"))
    assert_equal manifest[:inputs].size, 2
    assert_empty Dir.glob(File.join(@root, @job_id, "**", "*.tmp-*")), "no temporary file is left"
  end

  def test_links_a_file_input_when_told_to
    source = File.join(@root, "big.bin")
    File.write(source, "x" * 10)
    AgentSidecar::JobFolder.new(@root, @job_id, input_mode: :link).write(
      user_id: 1, agent_name: "a", job_name: "J", params: {}, inputs: { "big.bin" => Pathname(source) }
    )
    assert_equal File.stat(source).ino, File.stat(File.join(@root, @job_id, "input", "big.bin")).ino
  end

  def test_refuses_a_job_id_or_input_name_that_would_leave_the_root
    assert_raises(ArgumentError) { AgentSidecar::JobFolder.new(@root, "../../escaped") }
    ["../escaped.txt", "/tmp/escaped.txt", "a/./b", "a\\b", ""].each do |name|
      folder = AgentSidecar::JobFolder.new(@root, @job_id)
      assert_raises(ArgumentError, name) { folder.write(user_id: 1, agent_name: "a", job_name: "J", params: {}, inputs: { name => "x" }) }
    end
    refute File.exist?(File.join(@root, "escaped.txt"))
  end
end
