#!/usr/bin/env python3
"""Fleet test agent. Takes an exclusive lock on its job folder's run.lock and fails loudly if
another attempt holds it (the job would be running on two nodes at once); appends
"<node> <attempt> <pid>" to the folder's markers file; reports once; sleeps `seconds`. With
`ticks`, it spends those seconds appending "<node> <attempt> <wall ns>" to the folder's spans
file and to stderr every 20 ms (a killed run's last tick is its end)."""
import fcntl
import json
import os
import sys
import time

params = json.loads(os.environ.get("AGENT_PARAMS") or "{}")
job_root = os.path.dirname(os.environ["AGENT_OUTPUT_DIR"])
node, attempt = os.environ["FLEET_NODE"], os.environ["AGENT_ATTEMPT"]
lock = open(os.path.join(job_root, "run.lock"), "w")
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    with open(os.path.join(job_root, "overlap"), "a") as f:
        f.write(f"{node} {attempt}\n")
    print("run.lock is held: another attempt of this job is running", file=sys.stderr)
    sys.exit(3)
with open(os.path.join(job_root, "markers"), "a") as f:
    f.write(f"{node} {attempt} {os.getpid()}\n")
print(json.dumps({"stage": "run", "message": f"on {node}", "percent": 0}), flush=True)
seconds = float(params.get("seconds", 0))
if not params.get("ticks"):
    time.sleep(seconds)
    sys.exit(0)
end = time.time() + seconds
while time.time() < end:
    tick = f"{node} {attempt} {time.time_ns()}"
    with open(os.path.join(job_root, "spans"), "a") as f:
        f.write(tick + "\n")
    print(f"tick {tick}", file=sys.stderr, flush=True)
    time.sleep(0.02)
