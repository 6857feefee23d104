#!/usr/bin/env python3
"""Test agent: writes its environment to output/artifacts/env.json and reports its cwd."""
import json
import os

artifacts = os.path.join(os.environ["AGENT_OUTPUT_DIR"], "artifacts")
os.makedirs(artifacts, exist_ok=True)
with open(os.path.join(artifacts, "env.json"), "w") as f:
    json.dump({"env": dict(os.environ), "cwd": os.getcwd()}, f)
with open(os.path.join(os.environ["AGENT_OUTPUT_DIR"], "summary.json"), "w") as f:
    json.dump({"status": "partial", "notes": "one stage skipped"}, f)
print("plain line, not json", flush=True)
