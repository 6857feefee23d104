# One row per agent job this app has heard of: the idempotency record of its callbacks.
class CreateAgentSidecarJobs < ActiveRecord::Migration[6.1]
  def change
    create_table :agent_sidecar_jobs do |t|
      t.string :job_id, null: false
      t.string :job_name
      t.string :status, null: false, default: "in_progress"
      t.integer :last_progress_seq, null: false, default: 0
      t.string :completion_delivery_id
      t.integer :duplicate_completions, null: false, default: 0
      t.json :completion
      t.datetime :completed_at
      t.timestamps
    end
    add_index :agent_sidecar_jobs, :job_id, unique: true
    add_index :agent_sidecar_jobs, :completion_delivery_id, unique: true
  end
end
