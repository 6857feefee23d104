#!/usr/bin/env python3
"""Test agent: starts a child process, reports both pids, ignores SIGTERM and sleeps, so only
the process-group SIGKILL can end it and its child."""
import json
import os
import signal
import subprocess
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(["sleep", "3600"])
print(json.dumps({"stage": "pids", "message": f"{os.getpid()} {child.pid}"}), flush=True)
time.sleep(3600)
