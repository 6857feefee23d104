require "test_helper"

class CompletionTest < Minitest::Test
  include AgentSidecarTest
  include ActiveJob::TestHelper

  def setup
    configure_sidecar
    clear_enqueued_jobs
    @job_id = SecureRandom.uuid
    @payload = AgentSidecar::Testing.completion_body(job_name: "CountingJob", job_id: @job_id)
  end

  def receive(delivery_id = "dlv_#{@job_id}")
    AgentSidecar::Completion.new(@payload, job_id: @job_id, job_name: "CountingJob", delivery_id: delivery_id).receive
  end

  def test_concurrent_deliveries_of_one_completion_enqueue_the_handler_once
    outcomes = Array.new(8) { |i| Thread.new { ActiveRecord::Base.connection_pool.with_connection { receive("dlv_#{@job_id}_#{i % 2}") } } }.map(&:value)
    assert_equal 1, outcomes.count(:handled), outcomes.inspect
    assert_equal 7, outcomes.count(:duplicate), outcomes.inspect
    assert_equal 1, enqueued_jobs.count { |j| j["job_class"] == "CountingJob" }
    assert_equal 7, AgentSidecar::Job.find_by!(job_id: @job_id).duplicate_completions
  end

  def test_the_handler_runs_once_however_often_it_is_performed
    receive
    perform_enqueued_jobs
    3.times { CountingJob.perform_now(@job_id) }
    threads = Array.new(4) { Thread.new { ActiveRecord::Base.connection_pool.with_connection { CountingJob.perform_now(@job_id) } } }
    threads.each(&:join)
    assert_equal 1, handler_runs(@job_id)
    assert AgentSidecar::Job.find_by!(job_id: @job_id).handled_at
  end

  def test_a_handler_that_raises_rolls_back_and_runs_again_on_retry
    receive
    CountingJob.fail_next = true
    assert_raises(RuntimeError) { CountingJob.perform_now(@job_id) }
    assert_equal 0, handler_runs(@job_id), "the failed run's writes rolled back"
    assert_nil AgentSidecar::Job.find_by!(job_id: @job_id).handled_at
    CountingJob.perform_now(@job_id)
    assert_equal 1, handler_runs(@job_id)
  end

  def test_a_duplicate_enqueues_again_when_the_first_enqueue_never_happened
    AgentSidecar::Job.claim_completion(@job_id, @payload, "dlv_#{@job_id}") # as if the process died here
    assert_equal :duplicate, receive
    assert_equal 0, enqueued_jobs.size, "too soon: the winner may still be enqueuing"
    AgentSidecar::Job.where(job_id: @job_id).update_all(completed_at: 1.minute.ago)
    assert_equal :duplicate, receive
    assert_equal :duplicate, receive
    assert_equal 1, enqueued_jobs.size
  end

  def test_a_plain_class_handler_runs_through_the_dispatch_job
    plain = Class.new do
      class << self
        attr_accessor :calls
      end
      self.calls = []
      def self.completed(**arguments)
        calls << arguments
      end
    end
    AgentSidecar.config.register("PlainJob", plain)
    @payload["job_name"] = "PlainJob"
    assert_equal :handled, AgentSidecar::Completion.new(@payload, job_id: @job_id, job_name: "PlainJob", delivery_id: "d").receive
    perform_enqueued_jobs
    assert_equal [@job_id], plain.calls.map { |c| c[:job_id] }
  end

  def test_a_registered_class_without_completed_is_unavailable_and_not_terminal
    AgentSidecar.config.register("Nothing", Class.new)
    outcome = AgentSidecar::Completion.new(@payload, job_id: @job_id, job_name: "Nothing", delivery_id: "d").receive
    assert_equal :handler_unavailable, outcome
    assert_nil AgentSidecar::Job.find_by!(job_id: @job_id).completed_at
  end

  def test_the_registry_takes_only_constant_names_and_never_resolves_an_unregistered_one
    assert_raises(ArgumentError) { AgentSidecar.config.register("system('x')") }
    assert_nil AgentSidecar.config.handler_for("Kernel")
  end
end
