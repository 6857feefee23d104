#!/usr/bin/env python3
"""Example agent that fails: reports some progress, complains on stderr, exits 3."""
import json
import sys

print(json.dumps({"stage": "validate", "message": "Checking inputs", "percent": 10}), flush=True)
print("failing: the input folder has no usable documents", file=sys.stderr, flush=True)
print("failing: giving up", file=sys.stderr, flush=True)
sys.exit(3)
