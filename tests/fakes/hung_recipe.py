"""Stands in for a training recipe that hangs (a deadlocked collective, a stuck data loader): it reports
one step as the real recipe does (JSON lines on stdout), then never says anything again."""
import json
import sys
import time

print(json.dumps({"kind": "metrics", "step": 1, "total_steps": 10, "train_loss": 2.0}), flush=True)
sys.stdout.flush()
while True:
    time.sleep(60)
