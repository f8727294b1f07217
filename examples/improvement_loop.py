"""The continuous-improvement loop: pupils chat, a teacher corrects answers, the corrections become a training
file, a model is trained on it with a validation file, and it is promoted only if it beats the current one
(the project's gate), with the reason in the log.

    TUNELOG_URL=... TUNELOG_API_KEY=... python examples/improvement_loop.py
"""
from __future__ import annotations

import httpx
from _env import ROOT, URL, key, wait
from openai import OpenAI

api = httpx.Client(base_url=URL, headers={"Authorization": f"Bearer {key()}"}, timeout=120)
client = OpenAI(base_url=URL + "/v1", api_key=key())


def ok(r: httpx.Response) -> dict:
    if r.status_code >= 400:
        raise SystemExit(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
    return r.json()


ok(api.put("/api/settings", json={"promotion_requires_better_eval": True}))
questions = [f"What is {i} times 3?" for i in range(2, 12)]
for i, q in enumerate(questions, start=2):  # 1. pupils ask; 2. the teacher corrects each answer
    answer = client.chat.completions.create(model="tutor", max_tokens=8, messages=[{"role": "user", "content": q}],
                                            extra_body={"retrieval": False})
    ok(api.post("/api/chat/feedback", json={
        "chat_id": answer.id, "rating": 2, "corrected_answer": f"{i} times 3 is {i * 3}. Can you do {i} times 4?",
        "messages": [{"role": "user", "content": q}]}))
dataset = ok(api.post("/api/datasets/from-feedback"))  # 3. the approved corrections as a training file
print("training file from feedback:", dataset["id"], dataset["examples"], "examples")
valid = client.files.create(file=open(ROOT / "tests" / "data" / "tiny_valid.jsonl", "rb"), purpose="fine-tune")
job = client.fine_tuning.jobs.create(  # 4. retrain, evaluated on a validation file
    model="smollm2-135m-instruct", training_file=dataset["id"], validation_file=valid.id, suffix="loop", seed=3,
    method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}})
job = wait(lambda: client.fine_tuning.jobs.retrieve(job.id), lambda j: j.status in ("succeeded", "failed", "cancelled"))
if job.status != "succeeded":
    raise SystemExit(f"the job ended {job.status}: {job.error}")
model = client.models.retrieve(job.fine_tuned_model)
print("validation loss:", model.model_extra["lineage"]["final_metrics"].get("valid_loss"))
r = api.post("/api/aliases/tutor", json={"model": job.fine_tuned_model,  # 5. the gated promotion
                                         "reason": "trained on the teacher's corrections; better validation loss"})
if r.status_code == 409:
    print("promotion refused by the gate:", r.json()["error"]["message"])
else:
    ok(r)
    print("promoted:", r.json())
lineage = ok(api.get(f"/api/models/{job.fine_tuned_model}/lineage"))
print("trained from the answers of:", sorted(n["model"] for n in lineage["nodes"] if n.get("previous")))
