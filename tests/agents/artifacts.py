#!/usr/bin/env python3
"""Test agent: leaves artifacts of several sizes (one in a folder with a space in its name), a
symlink to /etc/passwd and a FIFO; with AGENT_PARAMS {"inline": true} its summary.json asks
for the small ones inline."""
import json
import os

params = json.loads(os.environ.get("AGENT_PARAMS") or "{}")
out = os.environ["AGENT_OUTPUT_DIR"]
artifacts = os.path.join(out, "artifacts")
os.makedirs(os.path.join(artifacts, "sub dir"), exist_ok=True)
with open(os.path.join(artifacts, "report.md"), "w") as f:
    f.write("# Report\n\nEverything went well.\n")
with open(os.path.join(artifacts, "big.bin"), "wb") as f:
    f.write(bytes(i % 251 for i in range(100_000)))
with open(os.path.join(artifacts, "sub dir", "data.json"), "w") as f:
    f.write('{"answer": 42}\n')
os.symlink("/etc/passwd", os.path.join(artifacts, "passwd"))
os.mkfifo(os.path.join(artifacts, "pipe"))
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump({"inline_artifacts": bool(params.get("inline"))}, f)
