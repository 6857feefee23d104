#!/usr/bin/env python3
"""Test agent: prints `count` progress events (each padded to `pad` bytes) `interval` seconds
apart, then exits 0."""
import json
import os
import time

params = json.loads(os.environ.get("AGENT_PARAMS") or "{}")
count = int(params.get("count", 10))
interval = float(params.get("interval", 0.02))
pad = "x" * int(params.get("pad", 0))
for i in range(count):
    print(json.dumps({"stage": "tick", "message": f"tick {i} {pad}", "percent": 100 * i / count}), flush=True)
    time.sleep(interval)
