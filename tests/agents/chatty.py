#!/usr/bin/env python3
"""Test agent: prints AGENT_PARAMS.mb megabytes of progress lines to stdout as fast as it can,
plus one very long line, then a last line of its own."""
import json
import os
import sys

params = json.loads(os.environ.get("AGENT_PARAMS") or "{}")
mb = int(params.get("mb", 200))
line = (json.dumps({"stage": "flood", "message": "x" * 1000}) + "\n").encode()
block = line * 1024
out = sys.stdout.buffer
for _ in range(mb):
    out.write(block)
out.write(b"y" * (5 * 1024 * 1024) + b"\n")
out.write(json.dumps({"stage": "done", "message": "last line", "percent": 100}).encode() + b"\n")
out.flush()
