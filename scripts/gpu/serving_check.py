"""GPU check of the serving tier (issue 11): tunelog's continuous-batching engine (workers/batching.py) on the
device vs plain `generate` one request after another, and vs vLLM's offline engine on the same prompts when
vLLM is installed. Prints and writes JSON: aggregate tokens/s, p50 time to first token, peak memory.

    python scripts/gpu/serving_check.py --model .data/models/smollm2-135m-instruct --n 64 --tokens 128 --out $OUT

On a CPU it runs too (`--n 4 --tokens 8`: a logic check). Nothing is downloaded: the model is a local folder.
The bundled weights (540 MB) are more than a device call may carry (64 MiB): prepare a folder without them here,
    python scripts/gpu/serving_check.py --prepare .data/gpu/smollm2-shape
and on the device pass `--model .data/gpu/smollm2-shape` (carry it): the model is built there with random
weights of the same shape (throughput does not depend on the weights' values).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

QUESTIONS = ["List the numbers from 1 to 1000 separated by commas.", "Explain photosynthesis step by step.",
             "Write a long story about a fox who learns to count.", "Describe the water cycle in detail."]


def ours(model: Path, n: int, tokens: int) -> dict:
    import torch

    from workers.batching import Engine, Request

    data = Path(tempfile.mkdtemp())
    (data / "models").mkdir()
    (data / "models" / model.name).symlink_to(model.resolve())
    engine = Engine(data / "models", data, max_batch=n, max_waiting=n, prefill_batch=min(n, 32))
    engine.start()
    name = model.name
    engine.served[name] = ("full:" + str(model.resolve()), None, str(model))

    def run(q: str, out: list) -> None:
        req = engine.submit(Request(model=name, messages=[{"role": "user", "content": q}], max_tokens=tokens))
        t0 = time.perf_counter()
        first, count = None, 0
        while True:
            item = req.out.get(timeout=600)
            if item[0] == "text":
                first = first or time.perf_counter() - t0
            else:
                if item[0] == "end":
                    count = item[2]["completion_tokens"]
                break
        out.append((first, count))

    warm: list = []
    run(QUESTIONS[0], warm)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    out: list = []
    threads = [threading.Thread(target=run, args=(QUESTIONS[i % len(QUESTIONS)], out)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    engine.stop()
    return {"tokens_per_s": sum(c for _, c in out) / wall, "ttft_p50_s": statistics.median(f or 0 for f, _ in out),
            "tokens": sum(c for _, c in out), "wall_s": wall,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}


def sequential(model: Path, n: int, tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(model)
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16 if dev == "cuda" else torch.float32).to(dev)
    m.eval()
    made, t0 = 0, time.perf_counter()
    for i in range(n):
        text = tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False).to(dev)
        with torch.inference_mode():
            out = m.generate(**ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.eos_token_id)
        made += out.shape[1] - ids["input_ids"].shape[1]
    return {"tokens_per_s": made / (time.perf_counter() - t0), "tokens": made}


def vllm(model: Path, n: int, tokens: int) -> dict | None:
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        return None
    llm = LLM(model=str(model), enable_lora=True, max_lora_rank=64, gpu_memory_utilization=0.5)
    msgs = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(n)]
    params = SamplingParams(temperature=0, max_tokens=tokens)
    llm.chat(msgs[:1], params)
    t0 = time.perf_counter()
    outs = llm.chat(msgs, params)
    made = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"tokens_per_s": made / (time.perf_counter() - t0), "tokens": made}


def prepare(dest: Path) -> None:
    """Config, tokenizer and chat template of the bundled model, without its weights."""
    import shutil

    src = ROOT / ".data/models/smollm2-135m-instruct"
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, dest / f.name)


def materialize(folder: Path) -> Path:
    """A folder without weights gets random ones of its config's shape (bf16), in a temporary folder."""
    if any(folder.glob("*.safetensors")):
        return folder
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(tempfile.mkdtemp()) / folder.name
    shutil.copytree(folder, out)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.bfloat16)
    model.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepare", type=Path, default=None, help="write a weightless copy of the bundled model here")
    ap.add_argument("--model", type=Path, default=ROOT / ".data/models/smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.prepare:
        prepare(a.prepare)
        return
    a.model = materialize(a.model)
    result = {"ours": ours(a.model, a.n, a.tokens), "sequential_generate": sequential(a.model, min(a.n, 8), a.tokens)}
    result["vllm"] = vllm(a.model, a.n, a.tokens)
    result["ours_vs_sequential"] = result["ours"]["tokens_per_s"] / result["sequential_generate"]["tokens_per_s"]
    if result["vllm"]:
        result["ours_vs_vllm"] = result["ours"]["tokens_per_s"] / result["vllm"]["tokens_per_s"]
    print(json.dumps(result, indent=2))
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "serving_check.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
