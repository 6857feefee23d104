#!/usr/bin/env python3
"""Test agent: records how many overlap agents run at once. Each run marks itself in
AGENT_PARAMS.dir/running, records the count it saw, stays a moment, and unmarks itself."""
import json
import os
import time

params = json.loads(os.environ["AGENT_PARAMS"])
running = os.path.join(params["dir"], "running")
os.makedirs(running, exist_ok=True)
me = os.path.join(running, os.environ["AGENT_JOB_ID"])
open(me, "w").close()
seen = len(os.listdir(running))
with open(os.path.join(params["dir"], "seen-" + os.environ["AGENT_JOB_ID"]), "w") as f:
    f.write(str(seen))
time.sleep(0.3)
os.remove(me)
