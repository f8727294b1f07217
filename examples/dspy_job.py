"""A DSPy job ("soft fine-tuning"): optimize the tutor program's demos over the bundled model with a few
question/answer pairs, then chat with the program and save its JSON state.

    TUNELOG_URL=... TUNELOG_API_KEY=... python examples/dspy_job.py
"""
from __future__ import annotations

import json

import httpx
from _env import ROOT, URL, key, wait
from openai import OpenAI

client = OpenAI(base_url=URL + "/v1", api_key=key())
lines = (ROOT / "data" / "dspy_tutor" / "train.jsonl").read_bytes().splitlines(keepends=True)
train = client.files.create(file=("qa.jsonl", b"".join(lines[:6])), purpose="fine-tune")
dev = (ROOT / "data" / "dspy_tutor" / "valid.jsonl").read_bytes().splitlines(keepends=True)
valid = client.files.create(file=("dev.jsonl", b"".join(dev[:2])), purpose="fine-tune")
job = client.fine_tuning.jobs.create(
    model="smollm2-135m-instruct", training_file=train.id, validation_file=valid.id, seed=7, suffix="qa",
    method={"type": "dspy", "dspy": {"optimizer": "bootstrap_few_shot", "metric": "contains", "max_tokens": 24,
                                     "max_bootstrapped_demos": 2, "max_labeled_demos": 2}})
job = wait(lambda: client.fine_tuning.jobs.retrieve(job.id), lambda j: j.status in ("succeeded", "failed", "cancelled"))
if job.status != "succeeded":
    raise SystemExit(f"the job ended {job.status}: {job.error}")
for event in reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=100))):
    if event.type == "metrics":
        print(" ", event.message)
program = httpx.get(f"{URL}/api/models/{job.fine_tuned_model}/program", headers={"Authorization": f"Bearer {key()}"},
                    timeout=60).json()  # DSPy's JSON state: program.load(path) reads it
print("demos:", [d["question"] for d in program["respond"]["demos"]])
answer = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=16, temperature=0,
                                        messages=[{"role": "user", "content": "What is the capital of Spain?"}],
                                        extra_body={"retrieval": False})
print(job.fine_tuned_model, "says:", answer.choices[0].message.content)
print(json.dumps(answer.model_extra["tunelog"]["program"]))
