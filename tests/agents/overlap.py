#!/usr/bin/env python3
"""Test agent: records how many overlap agents run at once. Each run marks itself in
AGENT_PARAMS.dir/running, records the most it saw there while it runs, and waits for the test
to create AGENT_PARAMS.dir/release (30 s at most) before it unmarks itself and exits."""
import json
import os
import time

params = json.loads(os.environ["AGENT_PARAMS"])
running = os.path.join(params["dir"], "running")
release = os.path.join(params["dir"], "release")
os.makedirs(running, exist_ok=True)
me = os.path.join(running, os.environ["AGENT_JOB_ID"])
open(me, "w").close()
seen = 0
deadline = time.monotonic() + 30
while True:
    seen = max(seen, len(os.listdir(running)))
    if os.path.exists(release) or time.monotonic() > deadline:
        break
    time.sleep(0.01)
with open(os.path.join(params["dir"], "seen-" + os.environ["AGENT_JOB_ID"]), "w") as f:
    f.write(str(seen))
os.remove(me)
