"""Local generation for chat: each base model loaded once, LoRA adapters of fine-tuned models loaded on
first use and kept (several adapters share one base, switched per request)."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Generation:
    """Filled in as tokens are produced (so a streaming caller can read the totals at the end)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    text: str = ""


@dataclass
class _Loaded:
    tokenizer: Any
    model: Any
    adapters: set[str] = field(default_factory=set)


class _Stop:
    """StoppingCriteria: ends a generation whose client went away."""

    def __init__(self) -> None:
        self.stop = threading.Event()

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.stop.is_set()


class ModelServer:
    def __init__(self, model_dir: Path, data_dir: Path):
        self.model_dir = model_dir
        self.data_dir = data_dir
        self._bases: dict[str, _Loaded] = {}
        self._load_lock = threading.Lock()
        self._gen_lock = threading.Lock()  # one generation at a time: torch already uses every core
        # Generations run on one long-lived thread (not a new thread per request): torch's OpenMP pool
        # is per calling thread, and keeping it warm keeps generate as fast as in a plain script.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    def _base(self, base_id: str) -> _Loaded:
        with self._load_lock:
            loaded = self._bases.get(base_id)
            if loaded is None:
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer

                from eventlog.catalog import model_path

                path = model_path(self.model_dir, base_id)
                dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
                if torch.cuda.is_available():
                    model = model.to("cuda")
                model.eval()
                loaded = _Loaded(AutoTokenizer.from_pretrained(path), model)
                self._bases[base_id] = loaded
            return loaded

    @staticmethod
    def adapter_name(model_id: str) -> str:
        return "a_" + "".join(ch if ch.isalnum() else "_" for ch in model_id)

    def _with_adapter(self, loaded: _Loaded, model_id: str, artifact_path: str) -> str:
        from peft import PeftModel

        name = self.adapter_name(model_id)
        with self._load_lock:
            if name not in loaded.adapters:
                path = str(self.data_dir / artifact_path)
                if not Path(path, "adapter_config.json").exists():
                    raise FileNotFoundError(f"the adapter of {model_id} is missing at {path}")
                if isinstance(loaded.model, PeftModel):
                    loaded.model.load_adapter(path, adapter_name=name)
                else:
                    loaded.model = PeftModel.from_pretrained(loaded.model, path, adapter_name=name)
                loaded.model.eval()
                loaded.adapters.add(name)
        return name

    def warm(self, base_id: str) -> None:
        self._base(base_id)

    def tokenizer(self, base_id: str):
        return self._base(base_id).tokenizer

    def stream(self, *, base_id: str, model_id: str, artifact_path: str | None, messages: list[dict[str, str]],
               max_tokens: int, temperature: float, top_p: float, seed: int | None, result: Generation
               ) -> Iterator[str]:
        """Yield text pieces as they are generated; `result` holds the token counts when done."""
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        loaded = self._base(base_id)
        adapter = self._with_adapter(loaded, model_id, artifact_path) if artifact_path else None
        tok = loaded.tokenizer
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = tok(text, return_tensors="pt", add_special_tokens=False).to(loaded.model.device)
        result.prompt_tokens = int(inputs["input_ids"].shape[1])
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=120)
        stopper = _Stop()
        kwargs: dict[str, Any] = dict(**inputs, max_new_tokens=max_tokens, streamer=streamer,
                                      stopping_criteria=StoppingCriteriaList([stopper]),
                                      pad_token_id=tok.pad_token_id or tok.eos_token_id)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        holder: dict[str, Any] = {}

        def run() -> None:
            try:
                if seed is not None:
                    torch.manual_seed(seed)
                model = loaded.model
                if adapter:
                    model.set_adapter(adapter)
                    ctx = nullcontext()
                else:  # the base model: bypass any adapter loaded on it
                    has_adapters = hasattr(model, "disable_adapter") and loaded.adapters
                    ctx = model.disable_adapter() if has_adapters else nullcontext()
                with ctx, torch.inference_mode():
                    holder["out"] = model.generate(**kwargs)
            except BaseException as e:  # surfaced to the caller below
                holder["error"] = e
                streamer.on_finalized_text("", stream_end=True)

        self._gen_lock.acquire()
        try:
            future = self._executor.submit(run)
            pieces = []
            try:
                for piece in streamer:
                    if piece:
                        pieces.append(piece)
                        yield piece
            finally:
                stopper.stop.set()  # a consumer that stops early (client gone) ends the generation
                future.result()
            if "error" in holder:
                raise holder["error"]
            out = holder["out"]
            result.completion_tokens = int(out.shape[1]) - result.prompt_tokens
            result.text = "".join(pieces)
            result.finish_reason = "length" if result.completion_tokens >= max_tokens else "stop"
        finally:
            self._gen_lock.release()


_server: ModelServer | None = None
_server_lock = threading.Lock()


def server(model_dir: Path, data_dir: Path) -> ModelServer:
    global _server
    with _server_lock:
        if _server is None:
            _server = ModelServer(model_dir, data_dir)
        return _server
