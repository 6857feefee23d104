require "erb"

module AgentSidecar
  # `<%= agent_sidecar_progress(job_id) %>` renders a live progress bar for one job. With
  # turbo-rails in the app, the bar is a Turbo Stream target (`turbo_stream_from`) that the
  # callbacks replace; otherwise a few lines of script subscribe to AgentSidecar::JobChannel
  # over the app's ActionCable socket (the actioncable-v1-json protocol, no JavaScript package
  # needed) and update the bar. Render it only on a page whose viewer may see the job: the
  # plain channel checks config.authorize_subscription, a Turbo stream name is signed.
  module ProgressHelper
    def agent_sidecar_progress(job_id, cable_path: nil)
      job_id = job_id.to_s.downcase
      raise ArgumentError, "job_id must be a UUID" unless AgentSidecar::UUID.match?(job_id)

      if ProgressHelper.turbo?
        safe_join([turbo_stream_from(ProgressHelper.turbo_stream_name(job_id)), ProgressHelper.bar_html(job_id, {}).html_safe])
      else
        path = cable_path || ActionCable.server.config.mount_path || "/cable"
        (ProgressHelper.bar_html(job_id, {}) + ProgressHelper.script(job_id, path)).html_safe
      end
    end

    class << self
      def turbo?
        defined?(::Turbo::StreamsChannel) ? true : false
      end

      def turbo_stream_name(job_id)
        "agent_sidecar_job_#{job_id}"
      end

      def dom_id(job_id)
        "agent_sidecar_job_#{job_id}"
      end

      # The bar for `message` (the newest progress, or {} before any).
      def bar_html(job_id, message)
        percent = message["percent"]
        label = [message["stage"], message["message"]].compact.join(": ")
        value = percent.is_a?(Numeric) ? %( value="#{percent.to_f.clamp(0, 100)}") : ""
        %(<div id="#{dom_id(job_id)}" class="agent-sidecar-progress" data-agent-sidecar-job="#{job_id}">) +
          %(<progress max="100"#{value}></progress> <span class="agent-sidecar-progress-label">#{ERB::Util.html_escape(label)}</span></div>)
      end

      def broadcast_turbo(job_id, message)
        ::Turbo::StreamsChannel.broadcast_replace_to(turbo_stream_name(job_id), target: dom_id(job_id), html: bar_html(job_id, message))
      end

      def script(job_id, cable_path)
        <<~HTML
          <script>
          (function () {
            var root = document.getElementById(#{dom_id(job_id).to_json}), seen = 0;
            var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + #{cable_path.to_json};
            var identifier = JSON.stringify({ channel: "AgentSidecar::JobChannel", job_id: #{job_id.to_json} });
            var socket = new WebSocket(url, ["actioncable-v1-json"]);
            socket.onopen = function () { socket.send(JSON.stringify({ command: "subscribe", identifier: identifier })); };
            socket.onmessage = function (event) {
              var frame = JSON.parse(event.data), m = frame.message;
              if (frame.type === "reject_subscription") { root.dataset.state = "forbidden"; return; }
              if (!m || typeof m !== "object") return;
              var bar = root.querySelector("progress"), label = root.querySelector("span");
              if (m.type === "progress" && m.seq > seen) {
                seen = m.seq;
                if (typeof m.percent === "number") bar.value = m.percent;
                label.textContent = [m.stage, m.message].filter(Boolean).join(": ");
              } else if (m.type === "completed") {
                root.dataset.state = m.status;
                if (m.status === "completed") bar.value = 100;
                label.textContent = m.status;
                socket.close();
              }
            };
          })();
          </script>
        HTML
      end
    end
  end
end
