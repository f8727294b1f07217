"""The baseline of `scripts/bench train`: a plain Hugging Face Trainer + peft LoRA run, nothing else.

    python scripts/bench_train_baseline.py CONFIG.json TRAIN.jsonl RESULT.json

CONFIG.json is the recipe config the worker wrote for the job it is compared with (workers/jobs.py's
recipe_config): the same base model folder, seed, LoRA r/alpha/dropout/target modules, learning rate,
warm-up, batch size, epochs, sequence length and torch thread count. The examples are tokenized with the
recipe's own `tokenize_example`, so the batches are the very same token ids in the same order (the
Trainer's sampler is seeded the same way). No token counting, no evaluation, no checkpoints, no callbacks
but the clock: the clock (perf_counter at each on_step_end) and a collator wrapper that records each
batch's non-padding tokens (attention_mask sum, in call order) are the only additions, for the bench.
RESULT.json: {"clock": {step: seconds}, "cpu": {step: process CPU seconds}, "batch_tokens": [...], "steps": N, ...}.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> None:
    from workers.hf.recipe import RecipeConfig, jsonl, tokenize_example

    cfg = RecipeConfig(**json.loads(Path(argv[1]).read_text()))  # the recipe's own defaults for what is absent
    train_path, result_path = argv[2], Path(argv[3])
    import torch

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    path = cfg.base_model_path
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    rows = []
    for ex in jsonl(train_path):
        row, _cut = tokenize_example(tok, ex["messages"], cfg.max_seq_len)
        if row is not None:
            rows.append(row)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules=cfg.target_modules,
                                             task_type="CAUSAL_LM"))
    pad = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    batch_tokens: list[int] = []

    def collate(features):
        batch = pad(features)
        batch_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    clock: dict[int, float] = {}
    cpu: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            clock[state.global_step] = time.perf_counter()
            cpu[state.global_step] = time.process_time()  # this process, all threads

    with tempfile.TemporaryDirectory(prefix="bench-train-baseline-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=cfg.batch_size, num_train_epochs=cfg.n_epochs,
            learning_rate=cfg.learning_rate, lr_scheduler_type="linear", warmup_steps=cfg.warmup_ratio,
            weight_decay=0.0, max_grad_norm=1.0, seed=cfg.seed, data_seed=cfg.seed,
            optim="adamw_torch", save_strategy="no", report_to="none", disable_tqdm=True, remove_unused_columns=False,
            use_cpu=True)
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Clock()])
        t0 = time.perf_counter()
        out = trainer.train()
        wall = time.perf_counter() - t0
    result_path.write_text(json.dumps({
        "clock": clock, "cpu": cpu, "batch_tokens": batch_tokens, "steps": trainer.state.global_step,
        "examples": len(rows),
        "train_wall_s": wall, "training_loss": float(out.training_loss), "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv)
