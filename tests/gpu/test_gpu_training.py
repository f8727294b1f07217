"""Local training on a CUDA device: the recipe, launched through torchrun as the worker launches it, trains the
bundled SmolLM2-135M a few LoRA steps in bf16, plain and under DeepSpeed ZeRO-2. Skipped where no CUDA device
is visible (CI's CPU boxes); scripts/gpu/run_gpu_check.sh measures the same path at 1B scale."""
from __future__ import annotations

import math

import pytest
import torch

from scripts.gpu.gpu_recipe_bench import recipe_config, recipe_env, run_recipe
from tests.conftest import DATA

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("deepspeed", [None, "zero2"])
def test_the_recipe_trains_on_cuda_in_bf16(base_model, tmp_path, deepspeed):
    cfg = recipe_config(tmp_path, base_model, DATA / "tiny_train.jsonl", batch_size=4, max_seq_len=128, seed=5,
                        deepspeed=deepspeed)
    log = tmp_path / "recipe.log"
    res = run_recipe(cfg, tmp_path, timeout=600, env=recipe_env(cpu=False), log=log)
    tail = log.read_text(errors="replace")[-4000:]
    assert res["rc"] == 0, tail
    records = res["records"]
    done = [r for r in records if r["kind"] == "done"]
    assert done and done[0]["trained_tokens"] > 0, tail
    messages = [r["message"] for r in records if r["kind"] == "message"]
    assert any("on cuda" in m and m.endswith("bf16") for m in messages), messages
    if deepspeed:
        assert any("DeepSpeed zero2" in m for m in messages), messages
    steps = [r for r in records if r["kind"] == "metrics" and "train_loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]  # 12 examples, batches of 4
    assert all(math.isfinite(r["train_loss"]) and r["tokens_seen"] > 0 for r in steps)
    assert (tmp_path / "model" / "adapter_config.json").exists()
