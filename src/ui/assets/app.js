// agent-sidecar mission control: progressive enhancements only; every page works without it.
"use strict";

// "Select all" on the jobs list: shown only when this script runs, since it needs it.
for (const box of document.querySelectorAll("input[data-select-all]")) {
  const name = box.dataset.selectAll;
  const form = box.form;
  box.closest("[hidden]")?.removeAttribute("hidden");
  box.addEventListener("change", () => {
    for (const item of form.querySelectorAll(`input[type="checkbox"][name="${name}"]`)) {
      item.checked = box.checked;
    }
  });
}

// Live parts of the overview and the jobs list: one feed, each part swapped in as HTML the
// server rendered (and escaped) when it changes; ticked checkboxes stay ticked.
const parts = document.querySelectorAll("[data-live]");
if (parts.length > 0) {
  const feed = new EventSource("/ui/feed");
  for (const part of parts) {
    feed.addEventListener(part.dataset.live, (event) => {
      const ticked = new Set(
        Array.from(part.querySelectorAll("input[type=checkbox]:checked"), (box) => box.value),
      );
      const template = document.createElement("template");
      template.innerHTML = event.data;
      for (const box of template.content.querySelectorAll("input[type=checkbox]")) {
        box.checked = ticked.has(box.value);
      }
      part.replaceChildren(template.content);
    });
  }
}

// The job page: its event stream moves the progress bar, appends each progress message and
// follows the state; the browser resumes it with Last-Event-ID after a drop.
const job = document.querySelector("[data-job-feed]");
if (job) {
  const bar = job.querySelector("progress");
  const log = job.querySelector("[data-live-log]");
  const state = job.querySelector("[data-live-state]");
  const feed = new EventSource(job.dataset.jobFeed);
  feed.addEventListener("progress", (event) => {
    const data = JSON.parse(event.data);
    if (typeof data.percent === "number") {
      bar.value = Math.max(0, Math.min(100, data.percent));
    }
    const text = [data.stage, data.message].filter(Boolean).join(": ");
    if (text) {
      const line = document.createElement("li");
      line.textContent = text;
      log.append(line);
    }
  });
  feed.addEventListener("state", (event) => {
    const data = JSON.parse(event.data);
    state.textContent = data.state;
    if (["completed", "partial", "failed", "canceled", "timed_out"].includes(data.state)) {
      bar.value = 100;
      feed.close();
    }
  });
}
