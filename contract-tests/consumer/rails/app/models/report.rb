# The example domain: a report an agent compiles (ReportCompileJob).
class Report < ApplicationRecord
end
