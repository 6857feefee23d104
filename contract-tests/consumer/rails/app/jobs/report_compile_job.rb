# The example handler (registered by `rails g agent_sidecar:handler ReportCompileJob`): runs once
# per job on ActiveJob, reads the job's outputs (here the index the callback carries) and
# updates the domain record.
class ReportCompileJob < ApplicationJob
  include AgentSidecar::Handler
  queue_as :default

  def completed(job_id:, status:, output_uri:, output_index:, error:, meta:)
    report = Report.find_or_create_by!(job_id: job_id)
    report.update!(
      status: status,
      handler_calls: report.handler_calls + 1,
      # A large summary arrives as a trimmed index that only counts its artifacts.
      artifact_count: output_index["artifact_count"] || Array(output_index["artifacts"]).size,
      error_reason: error && error["reason"]
    )
    Rails.logger.info("ReportCompileJob.completed job #{job_id} #{status} (#{meta['duration_ms']} ms, #{output_uri})")
  end
end
