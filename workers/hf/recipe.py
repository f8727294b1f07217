"""Local fine-tuning of a causal LM: one readable recipe (setup, train, evaluate, save_checkpoint, cleanup).

Launched by workers/jobs.py through `torchrun` (one process per visible GPU, or one on the CPU) as
`python -m torch.distributed.run ... -m workers.hf.recipe CONFIG.json`. It is given only a config file
written from the job's events, and knows nothing of the event log: it reports through an injected
metrics logger (JSON lines appended to a file the worker tails) and reads one control file (`pause`).

The heavy lifting is the Hugging Face `Trainer` (TRL's `DPOTrainer` for preference data): checkpoints
with optimizer, scheduler, RNG and data position, rotation (last 3), evaluation, early stopping,
DeepSpeed ZeRO through accelerate, bf16. This file adds what a job needs around it: the data (chat
template, assistant-only labels, truncation counts, streamed to disk), token accuracy, metrics events,
pause at a step boundary, resume from the latest checkpoint.
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINT_PREFIX = "checkpoint-"  # the Trainer's own folder names: checkpoint-<global step>
KEEP_CHECKPOINTS = 3  # as OpenAI keeps the last 3
EVAL_SAMPLES = 256  # valid_loss at intervals is measured on at most this many validation examples


@dataclass
class RecipeConfig:
    base_model_path: str
    train_file: str
    output_dir: str  # the final model (adapter or full weights) and tokenizer
    run_dir: str  # checkpoints; shared by every attempt of the job, so a new attempt resumes from them
    metrics_file: str  # JSON lines for the worker
    control_dir: str  # the worker creates `pause` here
    n_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    method: str = "supervised"  # or "dpo"
    valid_file: str | None = None
    cache_dir: str | None = None  # tokenized datasets (arrow files on disk)
    max_seq_len: int = 1024
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    qlora: bool = False
    deepspeed: str | None = None  # zero2 | zero3 | zero3_offload
    checkpoint_interval: int | None = None  # steps; None: at the end of each epoch only
    eval_interval: int | None = None  # steps; None: at each checkpoint
    early_stopping_patience: int | None = None
    packing: bool = False
    beta: float = 0.1  # DPO
    warmup_ratio: float = 0.1
    num_threads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"torch_compile": true} for the GPU bench


# ---- the injected metrics logger ---------------------------------------------------------------------
class MetricsLogger:
    """One JSON object per line, appended and flushed at once (the worker tails the file). Only the main
    process of a distributed run writes."""

    def __init__(self, path: str | None, enabled: bool = True):
        self.enabled = enabled and path is not None
        self._f = open(path, "a", buffering=1, encoding="utf-8") if self.enabled else None  # noqa: SIM115

    def emit(self, kind: str, **data: Any) -> None:
        if self._f is not None:
            self._f.write(json.dumps({"kind": kind, **data}, allow_nan=False, default=str) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


# ---- data ---------------------------------------------------------------------------------------------
def tokenize_example(tokenizer, messages: list[dict[str, Any]],
                     max_len: int) -> tuple[dict[str, list[int]] | None, int]:
    """(token ids with labels only on assistant turns (weight 1), tokens cut by truncation).

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
    cut = max(0, len(ids) - max_len)
    ids, labels = ids[:max_len], labels[:max_len]
    if all(x == -100 for x in labels):
        return None, cut  # the assistant turn was truncated away: nothing to learn from
    return {"input_ids": ids, "labels": labels}, cut


def jsonl(path: str) -> Iterator[dict[str, Any]]:
    """The file's objects, one line at a time: a large file is never held whole in memory."""
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


@dataclass
class DataReport:
    examples: int = 0
    truncated: int = 0
    tokens_cut: int = 0
    skipped: int = 0


def chat_dataset(path: str, tokenizer, max_len: int, cache_dir: str | None, report: DataReport,
                 alive=lambda n: None):
    """Tokenized chat examples written to arrow files on disk as they are produced (bounded memory)."""
    from datasets import Dataset

    def rows() -> Iterator[dict[str, list[int]]]:
        for ex in jsonl(path):
            report.examples += 1
            if report.examples % 2000 == 0:
                alive(report.examples)
            row, cut = tokenize_example(tokenizer, ex["messages"], max_len)
            if cut:
                report.truncated += 1
                report.tokens_cut += cut
            if row is None:
                report.skipped += 1
                continue
            yield row

    # keep_in_memory=False and a cache dir: rows go to disk in batches of writer_batch_size
    return Dataset.from_generator(rows, cache_dir=cache_dir, writer_batch_size=1000)


def preference_dataset(path: str, cache_dir: str | None, report: DataReport):
    """OpenAI's preference format -> TRL's conversational one (prompt / chosen / rejected)."""
    from datasets import Dataset

    def clean(msgs: list[dict[str, Any]]) -> list[dict[str, str]]:
        return [{"role": m["role"], "content": m.get("content") or ""} for m in msgs]

    def rows() -> Iterator[dict[str, Any]]:
        for ex in jsonl(path):
            report.examples += 1
            yield {"prompt": clean(ex["input"]["messages"]), "chosen": clean(ex["preferred_output"]),
                   "rejected": clean(ex["non_preferred_output"])}

    return Dataset.from_generator(rows, cache_dir=cache_dir, writer_batch_size=1000)


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest complete checkpoint (trainer_state.json is written last), or None."""
    best = None
    for p in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        step = p.name[len(CHECKPOINT_PREFIX):]
        if step.isdigit() and (p / "trainer_state.json").is_file() and (best is None or int(step) > best[0]):
            best = (int(step), p)
    return str(best[1]) if best else None


def deepspeed_config(stage: str | None) -> dict[str, Any] | None:
    """DeepSpeed settings for a named stage; "auto" values are filled in by the Trainer's arguments."""
    if stage is None:
        return None
    zero: dict[str, Any] = {"stage": 3 if stage.startswith("zero3") else 2, "overlap_comm": True,
                            "contiguous_gradients": True, "reduce_bucket_size": "auto"}
    if zero["stage"] == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True, stage3_prefetch_bucket_size="auto",
                    stage3_param_persistence_threshold="auto")
    cfg: dict[str, Any] = {"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
                           "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
                           "bf16": {"enabled": "auto"}, "zero_optimization": zero}
    if stage == "zero3_offload":
        zero.update(offload_optimizer={"device": "cpu", "pin_memory": True},
                    offload_param={"device": "cpu", "pin_memory": True})
        cfg["zero_force_ds_cpu_optimizer"] = False  # the Trainer's AdamW; DeepSpeedCPUAdam needs a compiled op
    return cfg


# ---- the callback that turns the Trainer's logs into our metrics ---------------------------------------
def _callback_class():
    from transformers import TrainerCallback

    class EventsCallback(TrainerCallback):
        """Merges each step's train and eval logs into one metrics record, reports checkpoints (with what
        rotation kept), estimates the finish from measured step times, and pauses when asked."""

        def __init__(self, recipe: Recipe):
            self.r = recipe
            self.pending: dict[str, Any] = {}
            self.last: dict[str, Any] = {}  # the latest value of every metric, for checkpoints
            self.step_times: list[float] = []
            self.last_step_at: float | None = None
            self.tokens_at: tuple[float, int] | None = None
            self.saved_step: int | None = None
            self.alive_at = time.perf_counter()

        def flush(self, state) -> None:
            if not self.pending:
                return
            rec = {"total_steps": state.max_steps, **self.pending}
            if self.step_times:
                per_step = sum(self.step_times) / len(self.step_times)
                rec["step_seconds"] = round(per_step, 4)
                rec["remaining_seconds"] = round(per_step * max(0, state.max_steps - rec.get("step", 0)), 1)
            self.r.metrics.emit("metrics", **rec)
            self.pending = {}

        def on_train_begin(self, args, state, control, **kw):
            self.last_step_at = time.perf_counter()
            self.tokens_at = (time.perf_counter(), state.num_input_tokens_seen)

        def on_step_end(self, args, state, control, **kw):
            self.flush(state)  # the previous step's record (its eval and save came after its log)
            now = time.perf_counter()
            if self.last_step_at is not None:
                self.step_times = (self.step_times + [now - self.last_step_at])[-20:]
            self.last_step_at = now
            if self.r.pause_asked():
                control.should_save = True
                control.should_training_stop = True
                self.r.paused_at = state.global_step
            return control

        def on_prediction_step(self, args, state, control, **kw):
            now = time.perf_counter()  # a long evaluation must not look like a stalled process
            if now - self.alive_at > 30:
                self.alive_at = now
                self.r.metrics.emit("alive", stage="evaluating", step=state.global_step)

        def on_epoch_end(self, args, state, control, **kw):
            # a checkpoint (and an evaluation) at the end of every epoch, whatever the step interval
            if self.saved_step != state.global_step:
                control.should_save = True
                if self.r.valid_data is not None:
                    control.should_evaluate = True
            return control

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            out: dict[str, Any] = {}
            for key, value in logs.items():
                if not isinstance(value, (int, float)) or not math.isfinite(value):
                    continue
                name = {"loss": "train_loss", "mean_token_accuracy": "train_mean_token_accuracy",
                        "eval_loss": "valid_loss", "eval_mean_token_accuracy": "valid_mean_token_accuracy",
                        "learning_rate": "learning_rate", "grad_norm": "grad_norm"}.get(key)
                if name is None and key.startswith("full_valid_") and not key.endswith(("_runtime", "per_second")):
                    name = key
                if name is None and key.startswith(("rewards/", "logps/", "eval_rewards/")):  # DPO's
                    name = key.replace("eval_", "valid_").replace("/", "_")
                if name is not None:
                    out[name] = round(float(value), 6)
            if not out:  # the Trainer's closing summary (runtime, samples per second): nothing of ours
                return
            if self.pending and self.pending.get("step") != state.global_step:
                self.flush(state)  # a record per step, labelled with the step it was logged at
            out["step"] = state.global_step
            out["epoch"] = round(state.epoch or 0.0, 4)
            if "train_loss" in out:  # for throughput over any span of steps (scripts/bench train)
                out["tokens_seen"] = int(state.num_input_tokens_seen)
                out["clock"] = round(time.perf_counter(), 4)
                if self.r.cuda:
                    import torch

                    out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            if "train_loss" in out and self.tokens_at is not None:
                t, n = self.tokens_at
                now = time.perf_counter()
                if now > t and state.num_input_tokens_seen > n:
                    out["tokens_per_second"] = round((state.num_input_tokens_seen - n) / (now - t), 1)
                self.tokens_at = (now, state.num_input_tokens_seen)
            self.pending.update(out)
            self.last.update(out)

        def on_save(self, args, state, control, **kw):
            self.flush(state)
            self.saved_step = state.global_step
            path = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
            kept = sorted(int(p.name[len(CHECKPOINT_PREFIX):]) for p in Path(args.output_dir).glob(
                f"{CHECKPOINT_PREFIX}*") if p.name[len(CHECKPOINT_PREFIX):].isdigit())
            metrics = {"step": state.global_step, **{k: v for k, v in self.last.items() if k in (
                "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
                "full_valid_loss", "full_valid_mean_token_accuracy")}}
            self.r.metrics.emit("checkpoint", step=state.global_step, path=str(path), metrics=metrics, kept=kept)

    return EventsCallback


# ---- the recipe ---------------------------------------------------------------------------------------
class Recipe:
    def __init__(self, cfg: RecipeConfig):
        import torch

        self.cfg = cfg
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.cuda = torch.cuda.is_available()
        self.metrics = MetricsLogger(cfg.metrics_file, enabled=self.rank == 0)
        self.paused_at: int | None = None
        self.valid_data = None
        self._pause_file = Path(cfg.control_dir) / "pause"

    def pause_asked(self) -> bool:
        """Every rank must stop at the same step: the ranks agree through an all-reduce when distributed."""
        asked = self._pause_file.exists()
        if self.world > 1:
            import torch
            import torch.distributed as dist

            if dist.is_initialized():
                flag = torch.tensor([1 if asked else 0], device="cuda" if self.cuda else "cpu")
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                asked = bool(flag.item())
        return asked

    def setup(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.base_model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.bf16 = self.cuda and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        kwargs: dict[str, Any] = {"dtype": dtype}
        if cfg.qlora:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype)
        if self.cuda and cfg.deepspeed is None and not cfg.qlora:
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
        model = AutoModelForCausalLM.from_pretrained(cfg.base_model_path, **kwargs)
        # Training needs no KV cache, and with one transformers does not separate packed examples (it builds
        # the block-diagonal mask from the position ids only without a cache): off while training.
        model.config.use_cache = False
        self.peft_config = None
        if cfg.lora:
            from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

            if cfg.qlora:
                model = prepare_model_for_kbit_training(model)
            self.peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                          target_modules=cfg.target_modules, task_type="CAUSAL_LM")
            if cfg.method != "dpo":  # TRL wraps the model itself (and uses the adapter-free base as reference)
                # Adapters stay float32 (peft's default) on a bf16 base: AdamW updating bf16 weights in place,
                # with no float32 master copy, loses every update under half a bf16 step. bf16 adapters are
                # faster (see docs/bench.md) and available for experiments as extra.bf16_adapters.
                model = get_peft_model(model, self.peft_config,
                                       autocast_adapter_dtype=not (self.bf16 and cfg.extra.get("bf16_adapters")))
        self.model = model
        self.report = DataReport()
        cache = cfg.cache_dir
        if cfg.method == "dpo":
            self.train_data = preference_dataset(cfg.train_file, cache, self.report)
            self.valid_data = preference_dataset(cfg.valid_file, cache, DataReport()) if cfg.valid_file else None
        else:
            def alive(n: int) -> None:  # a large file takes minutes: the worker must not think us stalled
                self.metrics.emit("alive", stage="tokenizing", examples=n)

            self.train_data = chat_dataset(cfg.train_file, self.tokenizer, cfg.max_seq_len, cache, self.report,
                                           alive)
            self.valid_data = (chat_dataset(cfg.valid_file, self.tokenizer, cfg.max_seq_len, cache, DataReport())
                               if cfg.valid_file else None)
        if len(self.train_data) == 0:
            raise SystemExit("no trainable example: every assistant turn was truncated away")
        if self.report.truncated:
            self.metrics.emit("message", level="warn", message=(
                f"{self.report.truncated} of {self.report.examples} training examples were longer than "
                f"max_seq_len={cfg.max_seq_len} tokens and were truncated ({self.report.tokens_cut:,} tokens cut)"
                + (f"; {self.report.skipped} had no assistant token left and were skipped" if self.report.skipped
                   else "")))

    def _arguments(self):
        cfg = self.cfg
        steps_per_epoch = math.ceil(len(self.train_data) / (cfg.batch_size * self.world))
        save_steps = cfg.checkpoint_interval or steps_per_epoch
        eval_steps = cfg.eval_interval or save_steps
        early = cfg.early_stopping_patience is not None and self.valid_data is not None
        if early:  # the best model is reloaded at the end: evaluations must fall on checkpoints
            eval_steps = save_steps
        common: dict[str, Any] = dict(
            output_dir=cfg.run_dir, per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size, num_train_epochs=cfg.n_epochs,
            learning_rate=cfg.learning_rate, lr_scheduler_type="linear", warmup_steps=cfg.warmup_ratio,
            weight_decay=0.0, max_grad_norm=1.0, seed=cfg.seed, data_seed=cfg.seed,
            logging_steps=1, logging_first_step=True, save_strategy="steps", save_steps=save_steps,
            save_total_limit=KEEP_CHECKPOINTS, eval_strategy="steps" if self.valid_data is not None else "no",
            eval_steps=eval_steps if self.valid_data is not None else None,
            load_best_model_at_end=early, metric_for_best_model="eval_loss" if early else None,
            greater_is_better=False if early else None,
            bf16=self.bf16, report_to="none", disable_tqdm=True, remove_unused_columns=False,
            include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, dataloader_pin_memory=self.cuda,
            deepspeed=deepspeed_config(cfg.deepspeed), save_only_model=False,
            optim="adamw_torch_fused" if self.cuda else "adamw_torch",
            torch_compile=bool(cfg.extra.get("torch_compile")),
            gradient_checkpointing=bool(cfg.extra.get("gradient_checkpointing")),  # TRL turns it on by default
        )
        if cfg.method == "dpo":
            from trl import DPOConfig

            return DPOConfig(beta=cfg.beta, max_length=cfg.max_seq_len, **common)
        from transformers import TrainingArguments

        return TrainingArguments(**common)

    def train(self) -> None:
        from transformers import EarlyStoppingCallback

        cfg = self.cfg
        args = self._arguments()
        callbacks = [_callback_class()(self)]
        if args.load_best_model_at_end:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
        eval_small = None
        if self.valid_data is not None:
            eval_small = self.valid_data.select(range(min(len(self.valid_data), EVAL_SAMPLES)))
        if cfg.method == "dpo":
            from trl import DPOTrainer

            self.trainer = DPOTrainer(model=self.model, args=args, train_dataset=self.train_data,
                                      eval_dataset=eval_small, processing_class=self.tokenizer,
                                      peft_config=self.peft_config, callbacks=callbacks)
        else:
            from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

            # padding-free packing: a batch becomes one row, position ids restart per example, and the
            # attention masks keep the examples apart (transformers builds them from the position ids)
            collator = (DataCollatorWithFlattening() if cfg.packing else
                        DataCollatorForSeq2Seq(self.tokenizer, padding=True, label_pad_token_id=-100))
            self.trainer = _sft_trainer_class()(model=self.model, args=args, train_dataset=self.train_data,
                                                eval_dataset=eval_small, processing_class=self.tokenizer,
                                                data_collator=collator, callbacks=callbacks)
        trainable = sum(p.numel() for p in self.trainer.model.parameters() if p.requires_grad)
        what = (f"LoRA r={cfg.lora_r}" + (" on 4-bit weights (QLoRA)" if cfg.qlora else "") if cfg.lora
                else "full fine-tuning")
        self.metrics.emit("message", level="info", message=(
            f"{cfg.method}: {what}, {trainable:,} trainable parameters; {len(self.train_data)} examples; "
            f"{self.world} process(es) on {'cuda' if self.cuda else 'cpu'}"
            + (f", DeepSpeed {cfg.deepspeed}" if cfg.deepspeed else "") + (", bf16" if self.bf16 else "")))
        resume = latest_checkpoint(cfg.run_dir)
        if resume:
            step = Path(resume).name[len(CHECKPOINT_PREFIX):]
            self.metrics.emit("message", level="info", message=f"Resuming from the checkpoint at step {step} "
                              "(weights, optimizer, scheduler, random state and data position)")
        self.trainer.train(resume_from_checkpoint=resume)
        callbacks[0].flush(self.trainer.state)
        self.events = callbacks[0]

    def evaluate(self) -> dict[str, Any]:
        """The whole validation file, once, at the end (OpenAI's full_valid_* metrics)."""
        if self.valid_data is None:
            return {}
        m = self.trainer.evaluate(self.valid_data, metric_key_prefix="full_valid")
        self.events.flush(self.trainer.state)
        return {k: round(float(v), 6) for k, v in m.items()
                if k in ("full_valid_loss", "full_valid_mean_token_accuracy")}

    def save_final(self, final_metrics: dict[str, Any]) -> int:
        cfg = self.cfg
        self.model.config.use_cache = True  # the saved model generates with its cache
        self.trainer.save_model(cfg.output_dir)  # adapter (LoRA) or full weights; gathered under ZeRO-3
        if self.rank == 0:
            self.tokenizer.save_pretrained(cfg.output_dir)
            job_dir = Path(cfg.output_dir).parent
            (job_dir / "training_config.json").write_text(json.dumps(asdict(cfg), indent=2))
            (job_dir / "metrics.json").write_text(json.dumps(final_metrics, indent=2))
        return int(self.trainer.state.num_input_tokens_seen)

    def cleanup(self) -> None:
        self.metrics.close()
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _sft_trainer_class():
    import torch
    from transformers import Trainer

    class SFTTrainer(Trainer):
        """The Trainer plus mean token accuracy (train and eval), counted on the device without a sync."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            labels = inputs.get("labels")
            logits = getattr(outputs, "logits", None) if not isinstance(outputs, dict) else outputs.get("logits")
            if labels is not None and logits is not None:
                with torch.no_grad():
                    target = labels[:, 1:]
                    mask = target != -100
                    hit = ((logits[:, :-1].argmax(-1) == target) & mask).sum()
                    key = "train" if model.training else "eval"
                    acc = self.__dict__.setdefault("_acc", {})
                    c, n = acc.get(key, (0, 0))
                    acc[key] = (c + hit, n + mask.sum())
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, start_time=None):
            acc = self.__dict__.setdefault("_acc", {})
            if "loss" in logs and "train" in acc:
                c, n = acc.pop("train")
                logs["mean_token_accuracy"] = float(c) / max(1, int(n))
            for prefix in ("eval", "full_valid"):
                if f"{prefix}_loss" in logs and "eval" in acc:
                    c, n = acc.pop("eval")
                    logs[f"{prefix}_mean_token_accuracy"] = float(c) / max(1, int(n))
            super().log(logs, start_time)

    return SFTTrainer


def _die_with_parent() -> None:
    """SIGKILL this rank when its launcher dies, so no training outlives a cancelled or lost job."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def main(argv: list[str]) -> None:
    _die_with_parent()
    cfg = RecipeConfig(**json.loads(Path(argv[1]).read_text()))
    recipe = Recipe(cfg)
    try:
        recipe.setup()
        recipe.train()
        if recipe.paused_at is not None:
            recipe.metrics.emit("paused", step=recipe.paused_at)
            return
        final = recipe.evaluate()
        tokens = recipe.save_final({**recipe.events.last, **final})
        recipe.metrics.emit("done", trained_tokens=tokens, output_dir=cfg.output_dir,
                            metrics={**recipe.events.last, **final})
    finally:
        recipe.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    main(sys.argv)
