"""Supervised LoRA fine-tuning of a causal LM: one readable recipe (setup, train, save_checkpoint, cleanup).

Launched by workers/jobs.py as `python -m workers.hf.recipe CONFIG.json` (later via torchrun/deepspeed).
It knows nothing of the event log: it reports on stdout, one JSON object per line
({"kind": "metrics" | "checkpoint" | "message" | "done", ...}), and its parent turns those into events.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class RecipeConfig:
    base_model_path: str
    train_file: str
    output_dir: str
    checkpoint_dir: str
    n_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    valid_file: str | None = None
    max_seq_len: int = 1024
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])
    warmup_ratio: float = 0.1
    num_threads: int = 0


def emit(kind: str, **data: Any) -> None:
    """One progress record for the parent (stdout is the protocol; logs go to stderr)."""
    sys.stdout.write(json.dumps({"kind": kind, **data}) + "\n")
    sys.stdout.flush()


# ---- data -------------------------------------------------------------------------------------------
def tokenize_example(tokenizer, messages: list[dict[str, Any]], max_len: int) -> dict[str, list[int]] | None:
    """Token ids of the chat-templated conversation, with labels only on assistant turns (weight 1).

    The template has no {% generation %} markers, so each assistant span is found by rendering the
    conversation up to that turn: [prefix + generation prompt, prefix + the turn) are its tokens.
    """
    def render(msgs: list[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    msgs = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    ids = render(msgs, add_generation_prompt=False)
    labels = [-100] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or m.get("weight", 1) == 0:
            continue
        start = len(render(msgs[:i], add_generation_prompt=True))
        end = len(render(msgs[: i + 1], add_generation_prompt=False))
        for j in range(start, min(end, len(ids))):
            labels[j] = ids[j]
    ids, labels = ids[:max_len], labels[:max_len]
    if all(x == -100 for x in labels):
        return None  # the assistant turn was truncated away: nothing to learn from
    return {"input_ids": ids, "labels": labels}


def load_examples(path: str | None, tokenizer, max_len: int) -> list[dict[str, list[int]]]:
    if not path:
        return []
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            ex = tokenize_example(tokenizer, json.loads(line)["messages"], max_len)
            if ex is not None:
                out.append(ex)
    return out


def collate(batch: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, b in enumerate(batch):
        k = len(b["input_ids"])
        ids[i, :k] = torch.tensor(b["input_ids"])
        labels[i, :k] = torch.tensor(b["labels"])
        mask[i, :k] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# ---- recipe -----------------------------------------------------------------------------------------
class LoRARecipe:
    def __init__(self, cfg: RecipeConfig):
        self.cfg = cfg
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def setup(self) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = self.cfg
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.base_model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(cfg.base_model_path, dtype=dtype)
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.target_modules, task_type="CAUSAL_LM")
        self.model = get_peft_model(model, lora).to(self.device)
        self.train_data = load_examples(cfg.train_file, self.tokenizer, cfg.max_seq_len)
        self.valid_data = load_examples(cfg.valid_file, self.tokenizer, cfg.max_seq_len)
        if not self.train_data:
            raise SystemExit("no trainable example: every assistant turn was truncated away")
        self.steps_per_epoch = math.ceil(len(self.train_data) / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.n_epochs
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
        warmup = max(1, int(self.total_steps * cfg.warmup_ratio))

        def schedule(step: int) -> float:  # linear warm-up, then linear decay to 10%
            if step < warmup:
                return (step + 1) / warmup
            return max(0.1, 1.0 - 0.9 * (step - warmup) / max(1, self.total_steps - warmup))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        trainable = sum(p.numel() for p in params)
        emit("message", level="info",
             message=f"LoRA r={cfg.lora_r} on {len(cfg.target_modules)} module types: {trainable:,} trainable "
                     f"parameters; {len(self.train_data)} examples, {self.total_steps} steps on {self.device.type}")

    def _batches(self, epoch: int) -> list[list[dict[str, list[int]]]]:
        order = list(range(len(self.train_data)))
        random.Random(self.cfg.seed + epoch).shuffle(order)
        bs = self.cfg.batch_size
        return [[self.train_data[i] for i in order[k:k + bs]] for k in range(0, len(order), bs)]

    @torch.no_grad()
    def evaluate(self) -> float | None:
        if not self.valid_data:
            return None
        self.model.eval()
        total, count = 0.0, 0
        for k in range(0, len(self.valid_data), self.cfg.batch_size):
            batch = collate(self.valid_data[k:k + self.cfg.batch_size], self.tokenizer.pad_token_id)
            batch = {n: t.to(self.device) for n, t in batch.items()}
            n_tok = int((batch["labels"][:, 1:] != -100).sum())
            total += float(self.model(**batch).loss) * n_tok
            count += n_tok
        self.model.train()
        return total / max(count, 1)

    def train(self) -> int:
        cfg = self.cfg
        self.model.train()
        step, trained_tokens = 0, 0
        for epoch in range(cfg.n_epochs):
            for batch_examples in self._batches(epoch):
                t0 = time.perf_counter()
                batch = collate(batch_examples, self.tokenizer.pad_token_id)
                batch = {n: t.to(self.device) for n, t in batch.items()}
                loss = self.model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                step += 1
                n_tokens = int(batch["attention_mask"].sum())
                trained_tokens += n_tokens
                last_of_epoch = step % self.steps_per_epoch == 0 or step == self.total_steps
                valid_loss = self.evaluate() if last_of_epoch else None
                emit("metrics", step=step, total_steps=self.total_steps, epoch=round(step / self.steps_per_epoch, 4),
                     train_loss=round(float(loss), 6), learning_rate=self.scheduler.get_last_lr()[0],
                     valid_loss=None if valid_loss is None else round(valid_loss, 6),
                     tokens_per_second=round(n_tokens / (time.perf_counter() - t0), 1))
                if last_of_epoch:
                    self.save_checkpoint(step, {"step": step, "train_loss": round(float(loss), 6),
                                                "valid_loss": valid_loss, "epoch": epoch + 1})
        return trained_tokens

    def save_checkpoint(self, step: int, metrics: dict[str, Any]) -> None:
        path = Path(self.cfg.checkpoint_dir) / f"step-{step}"
        self.model.save_pretrained(path)
        emit("checkpoint", step=step, path=str(path), metrics=metrics)

    def save_final(self) -> None:
        out = Path(self.cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)


def main(argv: list[str]) -> None:
    raw = json.loads(Path(argv[1]).read_text())
    cfg = RecipeConfig(**raw)
    recipe = LoRARecipe(cfg)
    recipe.setup()
    tokens = recipe.train()
    recipe.save_final()
    emit("done", trained_tokens=tokens, output_dir=cfg.output_dir)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv)
