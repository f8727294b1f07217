"""Stands in for a training recipe that hangs (a deadlocked collective, a stuck data loader): it reports
one step as the real recipe does (a JSON line appended to the config's metrics file), then never says
anything again."""
import json
import sys
import time
from pathlib import Path

config = json.loads(Path(sys.argv[1]).read_text())
with open(config["metrics_file"], "a") as f:
    f.write(json.dumps({"kind": "metrics", "step": 1, "total_steps": 10, "train_loss": 2.0}) + "\n")
while True:
    time.sleep(60)
