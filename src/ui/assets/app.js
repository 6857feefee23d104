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
