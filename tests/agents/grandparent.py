#!/usr/bin/env python3
"""Test agent: starts a grandchild (of the sidecar) that ignores SIGTERM, records its pid in the
job folder (grandchild-<attempt>.pid) and appends "<attempt> <wall ns>" to the folder's ticks
file every 20 ms for a minute. The agent notes when it started (started-<attempt>) and waits."""
import json
import os
import signal
import subprocess
import sys
import time

TICKER = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
root, attempt = sys.argv[1], sys.argv[2]
end = time.time() + 60
while time.time() < end:
    with open(os.path.join(root, "ticks"), "a") as f:
        f.write(f"{attempt} {time.time_ns()}\\n")
    time.sleep(0.02)
"""

signal.signal(signal.SIGTERM, signal.SIG_IGN)
job_root = os.path.dirname(os.environ["AGENT_OUTPUT_DIR"])
attempt = os.environ["AGENT_ATTEMPT"]
with open(os.path.join(job_root, f"started-{attempt}"), "w") as f:
    f.write(str(time.time_ns()))
child = subprocess.Popen([sys.executable, "-c", TICKER, job_root, attempt])
with open(os.path.join(job_root, f"grandchild-{attempt}.pid.tmp"), "w") as f:
    f.write(str(child.pid))
os.rename(
    os.path.join(job_root, f"grandchild-{attempt}.pid.tmp"),
    os.path.join(job_root, f"grandchild-{attempt}.pid"),
)
print(json.dumps({"stage": "grandchild", "message": str(child.pid)}), flush=True)
time.sleep(60)
