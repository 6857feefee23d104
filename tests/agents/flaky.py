#!/usr/bin/env python3
"""Test agent: fails its first AGENT_PARAMS.fail_times attempts, then completes.

Each attempt writes output/attempt.txt with its number. A failing attempt exits
AGENT_PARAMS.exit_code (default 75, EX_TEMPFAIL); with AGENT_PARAMS.ask_after_s it first
prints the retry line {"retry": {"after_s": ..., "reason": ...}} as its final stdout line."""
import json
import os
import sys

params = json.loads(os.environ["AGENT_PARAMS"])
attempt = int(os.environ["AGENT_ATTEMPT"])
out = os.environ["AGENT_OUTPUT_DIR"]
with open(os.path.join(out, "attempt.txt"), "w") as f:
    f.write(str(attempt))
print(json.dumps({"stage": "work", "message": f"attempt {attempt}"}), flush=True)
if attempt <= params.get("fail_times", 0):
    if "ask_after_s" in params:
        ask = {"retry": {"after_s": params["ask_after_s"], "reason": "model answered 429"}}
        print(json.dumps(ask), flush=True)
    sys.exit(params.get("exit_code", 75))
print(json.dumps({"stage": "done", "percent": 100}), flush=True)
