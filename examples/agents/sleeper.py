#!/usr/bin/env python3
"""Example agent that outlives its timeout: it reports once, then sleeps (and ignores SIGTERM
when AGENT_PARAMS says {"ignore_sigterm": true}, to exercise the SIGKILL path)."""
import json
import os
import signal
import time

params = json.loads(os.environ.get("AGENT_PARAMS") or "{}")
if params.get("ignore_sigterm"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(json.dumps({"stage": "sleep", "message": "Sleeping for an hour", "percent": 0}), flush=True)
time.sleep(float(params.get("seconds", 3600)))
