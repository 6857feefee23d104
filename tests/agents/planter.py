#!/usr/bin/env python3
"""Test agent: while it runs, swaps what the sidecar writes in output/ for a link out.

AGENT_PARAMS: {"plant": NAME, "target": PATH, "how": "symlink"|"hardlink"}. NAME is a file of
output/ (log.txt, summary.json, ...), "artifacts" or "output" (the folder itself, moved aside
and replaced by a symlink to TARGET). It then prints to stderr and stdout, so the sidecar has
something to append after the swap, and exits 0.
"""
import json
import os
import sys

params = json.loads(os.environ.get("AGENT_PARAMS") or "{}")
output = os.environ["AGENT_OUTPUT_DIR"]
name, target, how = params["plant"], params["target"], params.get("how", "symlink")
path = output if name == "output" else os.path.join(output, name)

if name == "output":
    os.rename(output, output + ".moved")
elif os.path.isdir(path) and not os.path.islink(path):
    os.rename(path, path + ".moved")
elif os.path.lexists(path):
    os.remove(path)
(os.link if how == "hardlink" else os.symlink)(target, path)

for i in range(5):
    print(f"after the swap {i}", file=sys.stderr, flush=True)
    print(json.dumps({"stage": "swapped", "message": f"line {i}", "percent": 20 * i}), flush=True)
