#!/usr/bin/env python3
"""Test agent: leaves a symlink to /etc/passwd and a real file in output/artifacts/."""
import os

artifacts = os.path.join(os.environ["AGENT_OUTPUT_DIR"], "artifacts")
os.makedirs(artifacts, exist_ok=True)
os.symlink("/etc/passwd", os.path.join(artifacts, "passwd"))
with open(os.path.join(artifacts, "report.txt"), "w") as f:
    f.write("real artifact\n")
