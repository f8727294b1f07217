"""Peak CUDA memory of a training rank, without touching the recipe.

gpu_recipe_bench.py puts this folder first on PYTHONPATH of the recipe's processes (torchrun and its
rank) and sets GPU_BENCH_MEM_FILE: at a normal interpreter exit, a process that used CUDA appends
{"rank", "max_allocated_gib", "max_reserved_gib"} (torch's caching-allocator counters since the process
began, the anchors' measure) to that file. Any other sitecustomize found later on sys.path still runs.
"""
import atexit
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _dump() -> None:
    torch = sys.modules.get("torch")
    path = os.environ.get("GPU_BENCH_MEM_FILE")
    if torch is None or not path:
        return
    try:
        if not torch.cuda.is_initialized():
            return
        rec = {"rank": int(os.environ.get("RANK", "0")), "pid": os.getpid(),
               "max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
               "max_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
    except Exception as e:  # a probe must never turn a good run into a failed one
        print(f"gpu bench memory probe: {e!r}", file=sys.stderr)


if os.environ.get("GPU_BENCH_MEM_FILE"):
    atexit.register(_dump)

# chain to the sitecustomize this one shadows (a distribution's own, if any)
for _p in sys.path:
    _cand = os.path.join(_p or ".", "sitecustomize.py")
    if os.path.abspath(_p or ".") != _HERE and os.path.isfile(_cand):
        try:
            with open(_cand, encoding="utf-8") as _f:
                exec(compile(_f.read(), _cand, "exec"), {"__name__": "_chained_sitecustomize", "__file__": _cand})
        except Exception as _e:
            print(f"gpu bench probe: chained {_cand} failed: {_e!r}", file=sys.stderr)
        break
