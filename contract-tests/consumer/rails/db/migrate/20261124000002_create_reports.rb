# The example domain: a report compiled by an agent (not part of the reference consumer).
class CreateReports < ActiveRecord::Migration[6.1]
  def change
    create_table :reports do |t|
      t.string :job_id, null: false
      t.string :status, null: false, default: "queued"
      t.integer :handler_calls, null: false, default: 0
      t.integer :artifact_count
      t.string :error_reason
      t.timestamps
    end
    add_index :reports, :job_id, unique: true
  end
end
