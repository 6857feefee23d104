#!/usr/bin/env python3
"""Test agent: prints AGENT_PARAMS.lines progress lines as fast as it can."""
import json
import os
import sys

n = int(json.loads(os.environ.get("AGENT_PARAMS") or "{}").get("lines", 10000))
out = sys.stdout
for i in range(n):
    out.write(json.dumps({"stage": "burst", "message": f"line {i}", "percent": 100 * i / n}) + "\n")
out.flush()
