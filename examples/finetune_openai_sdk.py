"""Fine-tune with the unmodified openai SDK, then chat with the result.

    TUNELOG_URL=http://127.0.0.1:8000 TUNELOG_API_KEY=... python examples/finetune_openai_sdk.py
"""
from __future__ import annotations

from _env import ROOT, URL, key, wait
from openai import OpenAI

client = OpenAI(base_url=URL + "/v1", api_key=key())
train = client.files.create(file=open(ROOT / "tests" / "data" / "tiny_train.jsonl", "rb"), purpose="fine-tune")
job = client.fine_tuning.jobs.create(
    model="smollm2-135m-instruct", training_file=train.id, suffix="example", seed=1,
    method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}})
print("job", job.id, job.status)
job = wait(lambda: client.fine_tuning.jobs.retrieve(job.id), lambda j: j.status in ("succeeded", "failed", "cancelled"))
for event in reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=100))):
    print(" ", event.message)
if job.status != "succeeded":
    raise SystemExit(f"the job ended {job.status}: {job.error}")
answer = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=16, temperature=0,
                                        messages=[{"role": "user", "content": "What is a noun?"}],
                                        extra_body={"retrieval": False})
print(job.fine_tuned_model, "says:", answer.choices[0].message.content)
