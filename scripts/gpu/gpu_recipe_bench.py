#!/usr/bin/env python3
"""tunelog's training recipe on one GPU, side by side with the workplace's anchor scripts in the same call.

    python scripts/gpu/gpu_recipe_bench.py --anchors --budget 480   # the device run (run_gpu_check.sh)
    python scripts/gpu/gpu_recipe_bench.py --smoke --anchors        # CPU logic check: tiny Llama, seq 64, 3 steps

What it measures, all through the product's own entry point (`python -m torch.distributed.run --standalone
--nproc_per_node 1 -m workers.hf.recipe CONFIG.json`, as workers/jobs.py launches it):
  1. builds a random-weight Llama-3.2-1B-shaped model folder (hidden 2048, intermediate 8192, 16 layers, 32/8
     heads, vocab 128256, rope_theta 500000, tied embeddings; bf16) with the bundled SmolLM2 tokenizer (its ids,
     all < 49152, are valid rows of the 128256-row embedding), and chat examples that each fill max_seq_len
     2048 after the chat template (every row is truncated to exactly 2048 tokens: no padding, like the anchors'
     random ids);
  2. trains it with the recipe: LoRA r=16/alpha 32 on all linear layers, micro-batch 8, 1 epoch of 25 steps,
     no checkpoint inside the timed span (checkpoint_interval 10^6; the epoch-end save comes after the last
     step's record), configs: plain, "deepspeed": "zero2", then extra {"torch_compile": true} if time remains;
  3. tokens/s over steps 5..25 from the recipe's own records ((tokens_seen[25] - tokens_seen[5]) /
     (clock[25] - clock[5]); the records are written after each step's loss has been read, so the clock
     follows a device sync); peak memory = torch.cuda.max_memory_allocated() of the rank (probe/sitecustomize.py,
     at exit, without touching the recipe); MFU with the anchor's formula, LoRA: (4*N_frozen + 6*N_lora +
     12*L*H*seq) FLOP/token, against the bf16 matmul peak gpu_lora_anchor.py measures in the same call;
  4. with --anchors: anchors/gpu_deepspeed_anchor.py (HF Trainer + peft, plain and ZeRO-2) and
     anchors/gpu_lora_anchor.py (peak, plain torch loops, HF Trainer, extras), each under a share of the budget.
LoRA dropout is 0.0 here, as in the anchors (the product's default is 0.05). Results: $OUT (or --out)/
gpu_recipe_bench.json and gpu_check.md, rewritten after every stage; logs under logs/.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

T0 = time.perf_counter()
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=True)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=49152, tie_word_embeddings=True)
WORDS = ["the", "a", "of", "to", "and", "in", "that", "is", "for", "it", "as", "with", "on", "was", "by", "he", "at",
         "from", "his", "an", "be", "this", "which", "or", "are", "had", "one", "plant", "leaf", "light", "water",
         "root", "energy", "sugar", "oxygen", "cell", "seed", "flower", "soil", "carbon", "green", "animal",
         "number", "fraction", "half", "quarter", "divide", "share", "equal", "group", "count", "river", "mountain",
         "rain", "cloud", "ocean", "heat", "wind", "season", "because", "however", "therefore", "example",
         "question", "answer", "student", "teacher", "lesson", "explain", "understand"]


def P(*a: Any) -> None:
    print(*a, flush=True)


def elapsed() -> float:
    return time.perf_counter() - T0


def f(x: Any, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


# ---- shapes and sizes -----------------------------------------------------------------------------------------
class Plan:
    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.shape = TINY if smoke else LLAMA_1B
        self.seq, self.bs, self.warm, self.steps = (64, 2, 1, 3) if smoke else (2048, 8, 5, 25)
        self.examples = self.bs * self.steps  # one epoch of exactly `steps` steps
        self.lora = dict(lora_r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")


def lora_param_count(shape: dict[str, int], r: int) -> int:
    """Trainable parameters of LoRA r on q,k,v,o,gate,up,down of every layer (peft's "all-linear" on a Llama,
    lm_head excluded): r * (in + out) per module."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = (h + h) + (h + kv) + (h + kv) + (h + h) + (h + i) + (h + i) + (i + h)
    return r * per_layer * shape["num_hidden_layers"]


def flops_per_token(n_total: int, n_lora: int, shape: dict[str, int], seq: int) -> float:
    """The anchor's LoRA formula: 4*N_frozen + 6*N_lora + 12*L*H*seq."""
    return 4 * (n_total - n_lora) + 6 * n_lora + 12 * shape["num_hidden_layers"] * shape["hidden_size"] * seq


# ---- stage: build the model folder and the data (a subprocess: the driver never holds a CUDA context) ---------
def load_tokenizer(tokdir: Path):
    """The bundled SmolLM2 tokenizer; rebuilt from tokenizer.json when this transformers cannot read the saved
    config (the files come from a newer transformers)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(str(tokdir))
    except Exception as e:  # noqa: BLE001
        P(f"AutoTokenizer failed ({type(e).__name__}: {e}); rebuilding from tokenizer.json")
        cfg = json.loads((tokdir / "tokenizer_config.json").read_text())
        tok = PreTrainedTokenizerFast(tokenizer_file=str(tokdir / "tokenizer.json"),
                                      **{k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                                         if isinstance(cfg.get(k), str)})
        if (tokdir / "chat_template.jinja").exists():
            tok.chat_template = (tokdir / "chat_template.jinja").read_text()
        return tok


def build(work: Path, tokdir: Path, smoke: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from workers.hf.recipe import tokenize_example

    plan = Plan(smoke)
    tok = load_tokenizer(tokdir)
    model_dir = work / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    dev = "cpu" if smoke else "cuda"
    dtype = torch.float32 if smoke else torch.bfloat16
    c = LlamaConfig(**plan.shape, max_position_embeddings=max(plan.seq, 2048), use_cache=False,
                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.device(dev):  # random init directly on the device, as the anchors do
        m = AutoModelForCausalLM.from_config(c, dtype=dtype)
    n_base = sum(p.numel() for p in m.parameters())  # the tied embedding counted once
    m.save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    del m
    build_s = time.perf_counter() - t

    # chat examples whose assistant turn runs past max_seq_len: each row is cut to exactly `seq` tokens
    rng = random.Random(0)
    rows, lengths = [], []
    for i in range(plan.examples):
        user = f"Question {i}: explain " + " ".join(rng.choice(WORDS) for _ in range(12)) + "?"
        words: list[str] = []
        for _ in range(64):
            words += [rng.choice(WORDS) for _ in range(max(16, plan.seq // 2))]
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": " ".join(words)}]
            row, cut = tokenize_example(tok, messages, plan.seq)
            if row is None:
                raise SystemExit(f"the prompt alone is longer than max_seq_len {plan.seq}")
            if cut > 0:
                break
        rows.append(json.dumps({"messages": messages}))
        lengths.append(len(row["input_ids"]))
    (work / "train.jsonl").write_text("\n".join(rows) + "\n")
    info = {"n_base": n_base, "build_s": round(build_s, 1), "examples": len(rows),
            "row_tokens": sorted(set(lengths)), "rope": str(getattr(c, "rope_parameters", None)
                                                             or getattr(c, "rope_theta", None)),
            "model_gib_on_disk": round(sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 2**30, 2)}
    (work / "build.json").write_text(json.dumps(info))
    P("BUILD " + json.dumps(info))


def measure_peak(smoke: bool) -> None:
    """bf16 matmul peak, the anchor's way (8192^3, 10 timed after 3), for when the anchor did not run."""
    import torch

    dev, dtype, n = ("cpu", torch.float32, 512) if smoke else ("cuda", torch.bfloat16, 8192)
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=out)
    if dev == "cuda":
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(10):
            torch.mm(a, b, out=out)
        e.record()
        e.synchronize()
        dt = s.elapsed_time(e) / 1e3
    else:
        t = time.perf_counter()
        for _ in range(10):
            torch.mm(a, b, out=out)
        dt = time.perf_counter() - t
    P("PEAK " + json.dumps({"matmul_tflops": 2 * n**3 * 10 / dt / 1e12, "matmul_shape": f"{n}^3 {str(dtype)[6:]}"}))


# ---- the recipe through torchrun --------------------------------------------------------------------------------
def recipe_config(work: Path, model_dir: Path, train: Path, *, batch_size: int, max_seq_len: int, seed: int = 0,
                  deepspeed: str | None = None, extra: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    """A complete recipe config (validated by RecipeConfig itself), with its run folders under `work`."""
    from dataclasses import asdict

    from workers.hf.recipe import RecipeConfig

    work.mkdir(parents=True, exist_ok=True)
    (work / "control").mkdir(exist_ok=True)
    cfg = RecipeConfig(base_model_path=str(model_dir), train_file=str(train), output_dir=str(work / "model"),
                       run_dir=str(work / "checkpoints"), metrics_file=str(work / "metrics.jsonl"),
                       control_dir=str(work / "control"), cache_dir=str(work / "cache"), n_epochs=1,
                       batch_size=batch_size, learning_rate=2e-4, seed=seed, max_seq_len=max_seq_len,
                       deepspeed=deepspeed, extra=extra or {}, **more)
    return asdict(cfg)


def launch_command(config_path: Path, nproc: int = 1) -> list[str]:
    """workers/jobs.py's launch_command (single node), repeated here so that this script needs nothing of the
    service (no Postgres driver, no pydantic) on the GPU machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={max(1, nproc)}",
            "-m", "workers.hf.recipe", str(config_path)]


def recipe_env(cpu: bool, extra_path: list[str] = (), mem_file: Path | None = None) -> dict[str, str]:
    """The environment workers/jobs.py gives the recipe (plus the optional probe/shim folders)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "") or "1", "PYTHONUNBUFFERED": "1"}
    if cpu:
        env["DS_ACCELERATOR"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
    paths = [*extra_path, str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if mem_file is not None:
        env["GPU_BENCH_MEM_FILE"] = str(mem_file)
    return env


def _kill_tree(p: subprocess.Popen) -> None:
    try:
        import psutil

        procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        for q in procs:
            try:
                q.kill()
            except psutil.NoSuchProcess:
                pass
    except Exception:  # noqa: BLE001 - psutil missing or the process gone: the group kill below
        pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    p.wait()


def run_recipe(cfg: dict[str, Any], work: Path, timeout: float, env: dict[str, str], log: Path) -> dict[str, Any]:
    """Runs the recipe once; returns rc, wall seconds, and its records (metrics, messages, done)."""
    cfg_path = work / "config.json"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    Path(cfg["metrics_file"]).unlink(missing_ok=True)
    t = time.perf_counter()
    with open(log, "wb") as fh:
        p = subprocess.Popen(launch_command(cfg_path), cwd=str(ROOT), env=env, stdout=fh, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc: int | str = p.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            _kill_tree(p)
            rc = "timeout"
    records = []
    if Path(cfg["metrics_file"]).exists():
        for line in Path(cfg["metrics_file"]).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return {"rc": rc, "wall_s": round(time.perf_counter() - t, 1), "records": records}


def throughput(records: list[dict[str, Any]], first: int) -> dict[str, Any]:
    """Tokens/s between step `first` and the last step, from the records' tokens_seen and clock."""
    pts = {r["step"]: (r["tokens_seen"], r["clock"]) for r in records
           if r.get("kind") == "metrics" and "tokens_seen" in r and "clock" in r}
    if first not in pts or max(pts) <= first:
        return {"error": f"no records over steps {first}..last (steps seen: {sorted(pts)})"}
    last = max(pts)
    (n0, t0), (n1, t1) = pts[first], pts[last]
    return {"from_step": first, "to_step": last, "tokens": n1 - n0, "seconds": round(t1 - t0, 4),
            "tok_s": (n1 - n0) / (t1 - t0), "step_ms": (t1 - t0) / (last - first) * 1e3}


def trainable_from_messages(records: list[dict[str, Any]]) -> int | None:
    for r in records:
        m = re.search(r"([\d,]+) trainable parameters", r.get("message", "") if r.get("kind") == "message" else "")
        if m:
            return int(m.group(1).replace(",", ""))
    return None


def recipe_run(name: str, plan: Plan, work: Path, model_dir: Path, train: Path, timeout: float, logs: Path,
               extra_path: list[str], deepspeed: str | None = None, extra: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    rw = work / f"run-{name}"
    shutil.rmtree(rw, ignore_errors=True)
    cfg = recipe_config(rw, model_dir, train, batch_size=plan.bs, max_seq_len=plan.seq, deepspeed=deepspeed,
                        extra=extra, checkpoint_interval=10**6, **plan.lora)
    mem = rw / "memory.jsonl"
    res = run_recipe(cfg, rw, timeout, recipe_env(plan.smoke, [str(HERE / "probe"), *extra_path], mem),
                     logs / f"recipe_{name}.log")
    recs = res.pop("records")
    done = next((r for r in recs if r.get("kind") == "done"), None)
    out: dict[str, Any] = {"config": name, "deepspeed": deepspeed, "extra": extra or {}, **res,
                           "ok": res["rc"] == 0 and done is not None, "steps": max(
                               (r["step"] for r in recs if r.get("kind") == "metrics" and "step" in r), default=0),
                           "trained_tokens": done and done.get("trained_tokens"),
                           "messages": [r["message"] for r in recs if r.get("kind") == "message"][:6],
                           "n_lora": trainable_from_messages(recs), **throughput(recs, plan.warm)}
    losses = [r["train_loss"] for r in recs if r.get("kind") == "metrics" and "train_loss" in r]
    out["loss_first_last"] = [losses[0], losses[-1]] if losses else None
    if mem.exists():
        ranks = [json.loads(x) for x in mem.read_text().splitlines() if x.strip()]
        if ranks:
            out["peak_mem_gib"] = max(r["max_allocated_gib"] for r in ranks)
            out["peak_reserved_gib"] = max(r["max_reserved_gib"] for r in ranks)
    if not out["ok"]:
        tail = (logs / f"recipe_{name}.log").read_text(errors="replace").splitlines()[-30:]
        out["log_tail"] = tail
        P("\n".join(tail))
    P(f"-> recipe {name}: ok={out['ok']} rc={out['rc']} wall={out['wall_s']}s steps={out['steps']} "
      f"tok/s={f(out.get('tok_s'), ',.0f')} step={f(out.get('step_ms'), '.1f')}ms "
      f"peak={f(out.get('peak_mem_gib'), '.2f')}GiB loss={out['loss_first_last']}")
    return out


# ---- the driver -------------------------------------------------------------------------------------------------
def sub(cmd: list[str], timeout: float, log: Path, env: dict[str, str] | None = None) -> tuple[int | str, str]:
    """A child process with a hard timeout (its whole process group killed); (rc, its output)."""
    with open(log, "wb") as fh:
        p = subprocess.Popen(cmd, cwd=str(ROOT), env=env or os.environ.copy(), stdout=fh, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc: int | str = p.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            _kill_tree(p)
            rc = "timeout"
    return rc, log.read_text(errors="replace")


def datasets_impl(env: dict[str, str]) -> str | None:
    """The real `datasets` version on this machine, or None (then the shim is used)."""
    r = subprocess.run([sys.executable, "-c", "import datasets; print(datasets.__version__)"], env=env,
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def versions(env: dict[str, str]) -> dict[str, Any]:
    code = ("import json, importlib, platform\nout = {'python': platform.python_version()}\n"
            "for m in ('torch', 'transformers', 'peft', 'accelerate', 'deepspeed', 'datasets', 'trl'):\n"
            "    try:\n        out[m] = importlib.import_module(m).__version__\n"
            "    except Exception as e:\n        out[m] = 'MISSING ' + type(e).__name__\n"
            "import torch\nout['cuda'] = torch.version.cuda\nout['gpu'] = torch.cuda.get_device_name(0) "
            "if torch.cuda.is_available() else 'cpu'\nprint(json.dumps(out))")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"error": r.stderr[-500:]}


def write(R: dict[str, Any], out: Path) -> None:
    R["elapsed_s"] = round(elapsed(), 1)
    (out / "gpu_recipe_bench.json").write_text(json.dumps(R, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(R))


def markdown(R: dict[str, Any]) -> str:
    env, plan = R.get("env", {}), R.get("plan", {})
    peak = R.get("peak_tflops")
    lines = [f"# tunelog GPU check: {env.get('gpu')} ({'SMOKE, CPU float32' if R.get('smoke') else 'bf16'})", "",
             f"torch {env.get('torch')} (CUDA {env.get('cuda')}), transformers {env.get('transformers')}, peft "
             f"{env.get('peft')}, accelerate {env.get('accelerate')}, deepspeed {env.get('deepspeed')}, datasets "
             f"{R.get('datasets_impl')}. Model: {plan.get('model')}; LoRA r=16 alpha 32 dropout 0 all-linear; "
             f"seq {plan.get('seq')}, micro-batch {plan.get('bs')}; tokens/s over steps {plan.get('warm')}.."
             f"{plan.get('steps')}. bf16 matmul peak (measured, {R.get('peak_source')}): {f(peak, ',.0f')} TFLOP/s.",
             "", "| run | tokens/s | step ms | peak GiB (max allocated) | MFU (LoRA FLOPs / measured peak) | "
             "vs anchor HF Trainer | ok |", "|---|---|---|---|---|---|---|"]
    ref = (R.get("anchors", {}).get("ds", {}).get("runs", {}).get("plain") or {}).get("tok_s")

    def row(name: str, tok_s: Any, step_ms: Any, mem: Any, mfu: Any, ok: Any) -> str:
        return (f"| {name} | {f(tok_s, ',.0f')} | {f(step_ms, '.1f')} | {f(mem, '.1f')} | {f(mfu, '.1%')} | "
                f"{f(tok_s / ref if tok_s and ref else None, '.3f')}x | {ok} |")

    for name, r in R.get("runs", {}).items():
        lines.append(row(f"recipe {name}", r.get("tok_s"), r.get("step_ms"), r.get("peak_mem_gib"), r.get("mfu"),
                         "yes" if r.get("ok") else f"NO (rc {r.get('rc')})"))
    ds = R.get("anchors", {}).get("ds", {})
    for name, r in ds.get("runs", {}).items():
        lines.append(row(f"anchor HF Trainer {name}", r.get("tok_s"), r.get("step_ms"), r.get("peak_mem_gib"),
                         r.get("mfu"), "yes"))
    for r in R.get("anchors", {}).get("lora", {}).get("runs", []):
        lines.append(row(f"anchor {r['name']} {r['mode']} (bs {r['bs']})", r.get("tok_s"), r["step_s"] * 1e3,
                         r.get("peak_mem_gib"), r.get("mfu_lora_meas"), "yes"))
    errors = {**R.get("errors", {}), **{f"anchor {k}: {name}": v for k, a in R.get("anchors", {}).items()
                                         for name, v in (a.get("errors") or {}).items()}}
    lines += ["", "Errors: " + (json.dumps(errors) if errors else "none"),
              f"Elapsed: {R.get('elapsed_s')} s. Skipped: {R.get('skipped') or 'nothing'}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU float32 logic check: tiny Llama, seq 64, 3 steps")
    ap.add_argument("--anchors", action="store_true", help="also run anchors/*.py in this call")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for everything this script starts")
    ap.add_argument("--configs", default="plain,zero2,compile", help="recipe configs, in order (compile: optional)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/gpu-check-out")
    ap.add_argument("--work", default="/tmp/gpu-recipe-bench")
    ap.add_argument("--tokenizer", default=None, help="the SmolLM2 tokenizer files (default: .data/gpu/tokenizer, "
                    "else .data/models/smollm2-135m-instruct)")
    ap.add_argument("--force-shim", action="store_true", help="use scripts/gpu/shim even where datasets exists")
    ap.add_argument("--stage", choices=["build", "peak"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    tokdir = Path(args.tokenizer) if args.tokenizer else next(
        (p for p in (ROOT / ".data/gpu/tokenizer", ROOT / ".data/models/smollm2-135m-instruct")
         if (p / "tokenizer.json").exists()), ROOT / ".data/gpu/tokenizer")
    if args.stage == "build":
        return build(work, tokdir, args.smoke)
    if args.stage == "peak":
        return measure_peak(args.smoke)

    out = Path(args.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    plan = Plan(args.smoke)
    budget = args.budget

    def left() -> float:
        return budget - elapsed()

    base_env = recipe_env(args.smoke)
    impl = None if args.force_shim else datasets_impl(base_env)
    extra_path = [] if impl else [str(HERE / "shim")]
    R: dict[str, Any] = {"smoke": args.smoke, "budget_s": budget, "env": versions(base_env),
                         "datasets_impl": impl or "shim (scripts/gpu/shim: rows in memory)",
                         "plan": {"model": "tiny Llama (2 layers, hidden 64)" if args.smoke else
                                  "Llama-3.2-1B shape, random weights", "shape": plan.shape, "seq": plan.seq,
                                  "bs": plan.bs, "warm": plan.warm, "steps": plan.steps, **plan.lora},
                         "runs": {}, "anchors": {}, "errors": {}, "skipped": []}
    P(f"env: {R['env']}; datasets: {R['datasets_impl']}; budget {budget:.0f}s")
    if not args.smoke and R["env"].get("gpu") == "cpu":
        P("CUDA not available; use --smoke for the CPU logic check")
        sys.exit(2)
    write(R, out)

    # 1. the model folder and the data
    P(f"\n== build model + data  (t={elapsed():.0f}s)")
    rc, text = sub([sys.executable, __file__, "--stage", "build", "--work", str(work), "--tokenizer", str(tokdir)]
                   + (["--smoke"] if args.smoke else []), min(180, left()), logs / "build.log", base_env)
    m = re.search(r"^BUILD (.*)$", text, re.M)
    if rc != 0 or not m:
        R["errors"]["build"] = f"rc={rc}: {text[-1500:]}"
        write(R, out)
        P(text[-3000:])
        sys.exit(1)
    R["build"] = json.loads(m.group(1))
    P(f"built: {R['build']}")
    write(R, out)
    model_dir, train = work / "model", work / "train.jsonl"
    n_lora = lora_param_count(plan.shape, plan.lora["lora_r"])
    n_total = R["build"]["n_base"] + n_lora
    fpt = flops_per_token(n_total, n_lora, plan.shape, plan.seq)
    R["flops"] = {"n_total": n_total, "n_lora": n_lora, "per_token": fpt,
                  "formula": "lora: (4*N_frozen + 6*N_lora + 12*L*H*seq) per token (anchor's)"}

    # 2. the recipe: plain, zero2 (each capped so that the anchors keep a share), then the optional ones
    # The recipe's runs come first; each may use what the later ones' minimum (60 s) and the peak's (20 s) leave.
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    specs = {"plain": (None, None), "zero2": ("zero2", None), "zero3": ("zero3", None),
             "compile": (None, {"torch_compile": True})}
    essential = [c for c in configs if c != "compile"]
    for i, name in enumerate(essential):
        cap = min(240 if not args.smoke else 150, left() - 60 * (len(essential) - i - 1) - 20)
        if cap < (30 if args.smoke else 60):
            R["skipped"].append(f"recipe {name} (only {left():.0f}s left)")
            continue
        P(f"\n== recipe {name}  (t={elapsed():.0f}s, cap {cap:.0f}s)")
        ds, extra = specs[name]
        R["runs"][name] = recipe_run(name, plan, work, model_dir, train, cap, logs, extra_path, ds, extra)
        write(R, out)

    # 3. the anchors, same card, same call
    if args.anchors:
        anchor_env = {**os.environ, "OUT": str(out / "anchors"), "PYTHONUNBUFFERED": "1"}
        (out / "anchors").mkdir(exist_ok=True)
        per_cfg = min(100.0, (left() - 30) / 2 - 10)
        if per_cfg >= (20 if args.smoke else 45):
            P(f"\n== anchor: gpu_deepspeed_anchor.py  (t={elapsed():.0f}s, {per_cfg:.0f}s per config)")
            rc, text = sub([sys.executable, str(HERE / "anchors" / "gpu_deepspeed_anchor.py"), "--timeout",
                            str(int(per_cfg))] + (["--smoke"] if args.smoke else []), 2 * per_cfg + 20,
                           logs / "anchor_deepspeed.log", anchor_env)
            P("\n".join(text.splitlines()[-8:]))
            p = out / "anchors" / "gpu_ds_anchor.json"
            R["anchors"]["ds"] = json.loads(p.read_text()) if p.exists() else {"error": f"rc={rc}"}
        else:
            R["skipped"].append("anchor gpu_deepspeed_anchor.py")
        write(R, out)
        want_compile = "compile" in configs
        lora_budget = min(200.0, left() - (170 if want_compile and not args.smoke else 10))
        if lora_budget < (30 if args.smoke else 60) and want_compile:  # the anchor (and its peak) before compile
            lora_budget, configs = min(200.0, left() - 10), [c for c in configs if c != "compile"]
            R["skipped"].append("recipe compile (the anchor's peak comes first)")
        if lora_budget >= (30 if args.smoke else 60):
            P(f"\n== anchor: gpu_lora_anchor.py  (t={elapsed():.0f}s, budget {lora_budget:.0f}s)")
            rc, text = sub([sys.executable, str(HERE / "anchors" / "gpu_lora_anchor.py"), "--budget",
                            str(int(lora_budget))] + (["--smoke"] if args.smoke else []), lora_budget + 30,
                           logs / "anchor_lora.log", anchor_env)
            P("\n".join(text.splitlines()[-14:]))
            p = out / "anchors" / "gpu_anchor.json"
            R["anchors"]["lora"] = json.loads(p.read_text()) if p.exists() else {"error": f"rc={rc}"}
        else:
            R["skipped"].append("anchor gpu_lora_anchor.py")
        write(R, out)

    # 4. optional: torch.compile through the recipe's extra
    if "compile" in configs:
        cap = left() - 15
        if cap >= (30 if args.smoke else 150):
            P(f"\n== recipe compile  (t={elapsed():.0f}s, cap {cap:.0f}s)")
            R["runs"]["compile"] = recipe_run("compile", plan, work, model_dir, train, cap, logs, extra_path,
                                              None, {"torch_compile": True})
        else:
            R["skipped"].append(f"recipe compile (only {left():.0f}s left)")
        write(R, out)

    # 5. MFU against the measured peak of this call
    peak = (R["anchors"].get("lora", {}).get("peak") or {}).get("matmul_tflops")
    R["peak_source"] = "gpu_lora_anchor.py"
    if not peak and left() > 20:
        rc, text = sub([sys.executable, __file__, "--stage", "peak"] + (["--smoke"] if args.smoke else []),
                       min(60, left() - 5), logs / "peak.log", base_env)
        m = re.search(r"^PEAK (.*)$", text, re.M)
        peak = json.loads(m.group(1))["matmul_tflops"] if m else None
        R["peak_source"] = "own 8192^3 matmul (the anchor's did not run)"
    R["peak_tflops"] = peak
    for r in R["runs"].values():
        r["mfu"] = fpt * r["tok_s"] / (peak * 1e12) if peak and r.get("tok_s") else None
    for r in R["anchors"].get("ds", {}).get("runs", {}).values():
        r["mfu"] = fpt * r["tok_s"] / (peak * 1e12) if peak and r.get("tok_s") else None
    for name, r in R["runs"].items():
        if not r.get("ok"):
            R["errors"][f"recipe {name}"] = f"rc={r.get('rc')}"
        if r.get("n_lora") and r["n_lora"] != n_lora:
            R["errors"][f"recipe {name} n_lora"] = f"recipe says {r['n_lora']}, formula {n_lora}"
    write(R, out)
    P("\n" + markdown(R))
    P(f"JSON -> {out}/gpu_recipe_bench.json; table -> {out}/gpu_check.md; logs -> {logs}")
    if not all(r.get("ok") for r in R["runs"].values()) or not R["runs"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
