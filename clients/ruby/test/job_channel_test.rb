require "test_helper"
require "action_cable/channel/test_case"

# Two users: each may watch only their own job.
class JobChannelTest < ActionCable::Channel::TestCase
  include AgentSidecarTest
  tests AgentSidecar::JobChannel

  setup do
    configure_sidecar
    @job_id = SecureRandom.uuid
    AgentSidecar::Job.remember(@job_id, user_id: "42", job_name: "CountingJob")
    AgentSidecar::Job.advance_progress(@job_id, 3, { "seq" => 3, "message" => "reading" })
  end

  test "the job's own user is subscribed and sent the newest progress" do
    stub_connection current_user: "42"
    subscribe job_id: @job_id
    assert subscription.confirmed?
    assert_has_stream AgentSidecar.stream_for(@job_id)
    assert_equal [{ "seq" => 3, "message" => "reading", "type" => "progress" }], transmissions
  end

  test "another user, no user and an unknown job are rejected" do
    stub_connection current_user: "43"
    subscribe job_id: @job_id
    assert subscription.rejected?
    stub_connection current_user: nil
    subscribe job_id: @job_id
    assert subscription.rejected?
    stub_connection current_user: "42"
    subscribe job_id: SecureRandom.uuid
    assert subscription.rejected?
  end

  test "the app's hook decides when it is set" do
    AgentSidecar.config.authorize_subscription = ->(job, connection) { connection.current_user == "admin" && job }
    stub_connection current_user: "admin"
    subscribe job_id: @job_id
    assert subscription.confirmed?
    stub_connection current_user: "42"
    subscribe job_id: @job_id
    assert subscription.rejected?
  end
end
