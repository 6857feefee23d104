# The example domain: POST /reports starts an agent job through AgentSidecar.trigger, GET shows it.
class ReportsController < ApplicationController
  # The report exists before the trigger: its completion may arrive before the 202 does.
  def create
    body = JSON.parse(request.raw_post)
    report = Report.create!(job_id: body["job_id"] || SecureRandom.uuid, status: "queued")
    accepted = AgentSidecar.trigger(
      agent: body.fetch("agent_name", "summarizer_v2"), job_name: "ReportCompileJob",
      user: body.fetch("user_id", "42"), params: body.fetch("params", {}), job_id: report.job_id,
      inputs: body.fetch("inputs", { "notes.txt" => "The quarter went well. Revenue grew. Costs fell.\n" })
    )
    render json: accepted, status: :accepted
  rescue AgentSidecar::Refused => e
    report.destroy
    render json: e.problem, status: e.status, content_type: "application/problem+json"
  rescue ArgumentError => e
    report&.destroy
    render json: { title: "Bad Request", status: 400, detail: e.message }, status: :bad_request, content_type: "application/problem+json"
  end

  def show
    report = Report.find_by!(job_id: params[:job_id])
    job = AgentSidecar::Job.find_by(job_id: params[:job_id])
    render json: report.as_json(only: %i[job_id status handler_calls artifact_count error_reason]).merge(
      "duplicate_completions" => job&.duplicate_completions, "last_progress_seq" => job&.last_progress_seq
    )
  rescue ActiveRecord::RecordNotFound
    head :not_found
  end

  def cancel
    render json: AgentSidecar.cancel(params[:job_id])
  end
end
