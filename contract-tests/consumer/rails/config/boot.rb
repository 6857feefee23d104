require "pathname"

# With a Gemfile.lock, Bundler sets up the gems (the Gemfile names agent_sidecar by path).
# Without one (CI: Debian's ruby-* packages, no RubyGems), the system gems are used and
# agent_sidecar is put on the load path from its checkout, AGENT_SIDECAR_GEM_PATH.
if File.exist?(File.expand_path("../Gemfile.lock", __dir__))
  require "bundler/setup"
else
  gem_dir = ENV.fetch("AGENT_SIDECAR_GEM_PATH") { File.expand_path("../../../../clients/ruby", __dir__) }
  $LOAD_PATH.unshift(File.join(gem_dir, "lib"))
end
