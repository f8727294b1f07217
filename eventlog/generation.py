"""Local generation for chat: each base model loaded once, LoRA adapters of fine-tuned models loaded on
first use and kept (several adapters share one base, switched per request)."""
from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _from_transformers(*names: str) -> list[Any]:
    """`from transformers import names`, waiting out another thread's first import of transformers (the
    preload thread's, or sentence-transformers'): while that runs, transformers' lazy module answers
    ImportError for names it has not set up yet, instead of blocking until it has."""
    for attempt in range(100):
        try:
            module = importlib.import_module("transformers")
            return [getattr(module, n) for n in names]
        except (ImportError, AttributeError):
            if attempt == 99:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


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


def _load(path: Path) -> _Loaded:
    """A model folder loaded for generation: bf16 on a GPU, float32 on the CPU."""
    import torch
    AutoModelForCausalLM, AutoTokenizer = _from_transformers("AutoModelForCausalLM", "AutoTokenizer")

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return _Loaded(AutoTokenizer.from_pretrained(path), model)


class _Stop:
    """StoppingCriteria: ends a generation whose client went away, or that ran past its time limit."""

    def __init__(self, time_limit: float | None = None) -> None:
        self.stop = threading.Event()
        self.time_limit = time_limit
        self.deadline: float | None = None
        self.timed_out = False

    def start(self) -> None:
        if self.time_limit is not None:
            self.deadline = time.monotonic() + self.time_limit

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.timed_out = True
            return True
        return self.stop.is_set()


class Run:
    """The text pieces of one generation. It holds the model (one generation at a time) from its start
    until it is exhausted or closed: close it in a `finally` (or a response's call_on_close), including
    when it was never iterated. Closing early stops the generation at the next token."""

    def __init__(self, pieces: Generator[str, None, None], release: Callable[[], None]):
        self._pieces = pieces
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except BaseException:  # exhausted or failed: either way the model is free again
            self.close()
            raise

    def close(self) -> None:
        release, self._release = self._release, None
        if release is None:
            return
        try:
            self._pieces.close()  # runs the generator's finally: stop, wait for the generate thread
        finally:
            release()


class ModelServer:
    def __init__(self, model_dir: Path, data_dir: Path):
        self.model_dir = model_dir
        self.data_dir = data_dir
        self._bases: dict[str, _Loaded] = {}
        self._load_lock = threading.Lock()
        self._counters: dict[str, tuple[Any, int]] = {}
        self._count_lock = threading.Lock()
        self._gen_lock = threading.Lock()  # one generation at a time: torch already uses every core
        # Generations run on one long-lived thread (not a new thread per request): torch's OpenMP pool
        # is per calling thread, and keeping it warm keeps generate as fast as in a plain script.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    def _base(self, base_id: str) -> _Loaded:
        with self._load_lock:
            loaded = self._bases.get(base_id)
            if loaded is None:
                from eventlog.catalog import model_path

                loaded = _load(model_path(self.model_dir, base_id))
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

    def _is_full_model(self, artifact_path: str) -> bool:
        folder = self.data_dir / artifact_path
        return not (folder / "adapter_config.json").exists() and (folder / "config.json").exists()

    def _full(self, artifact_path: str) -> _Loaded:
        """A fully fine-tuned model (or such a checkpoint), loaded from its folder; the two most recently
        used stay loaded (each is as large as its base)."""
        key = "full:" + artifact_path
        with self._load_lock:
            loaded = self._bases.pop(key, None)
            if loaded is None:
                loaded = _load(self.data_dir / artifact_path)
                full = [k for k in self._bases if k.startswith("full:")]
                for old in full[:-1]:  # keep at most two full models (this one included)
                    del self._bases[old]
            self._bases[key] = loaded  # re-inserted: the dict's order is the order of use
            return loaded

    def warm(self, base_id: str) -> None:
        self._base(base_id)

    def tokenizer(self, base_id: str):
        return self._base(base_id).tokenizer

    def _counter(self, base_id: str) -> tuple[Any, int]:
        """(tokenizer, context window) from the model's folder, without loading its weights: requests are
        measured at once, even while the model itself is still loading. Call with _count_lock held."""
        hit = self._counters.get(base_id)
        if hit is None:
            from eventlog.catalog import model_path

            AutoConfig, AutoTokenizer = _from_transformers("AutoConfig", "AutoTokenizer")
            path = model_path(self.model_dir, base_id)
            window = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None) or 2048
            hit = self._counters[base_id] = (AutoTokenizer.from_pretrained(path), int(window))
        return hit

    def context_window(self, base_id: str) -> int:
        """The most tokens (prompt and completion together) the base model was trained to attend over."""
        with self._count_lock:
            return self._counter(base_id)[1]

    def count_prompt_tokens(self, base_id: str, messages: list[dict[str, str]]) -> int:
        """Tokens of the prompt exactly as stream() builds it (chat template and generation prompt)."""
        with self._count_lock:  # one tokenizer of its own, used by one thread at a time
            tok = self._counter(base_id)[0]
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return len(tok(text, add_special_tokens=False)["input_ids"])

    def count_text_tokens(self, base_id: str, text: str) -> int:
        """Tokens of a text (a completion), with the counting tokenizer: never the one a generation streams with."""
        with self._count_lock:
            return len(self._counter(base_id)[0](text, add_special_tokens=False)["input_ids"])

    def stream(self, *, base_id: str, model_id: str, artifact_path: str | None, messages: list[dict[str, str]],
               max_tokens: int, temperature: float, top_p: float, seed: int | None, result: Generation,
               queue_timeout: float | None = None, time_limit: float | None = None) -> Run:
        """Wait for the model (at most `queue_timeout` seconds, then 429 model_busy), and return the Run
        that yields text pieces as they are generated; `result` holds the token counts when done. A
        generation running past `time_limit` seconds is stopped (finish_reason "length")."""
        from domain.errors import TooManyRequests

        # A bounded wait: the queue for the model never holds a request thread for longer than this. Taken
        # before anything touches the model: the generating thread's streamer decodes with the same (Rust)
        # tokenizer, and two threads in it at once fail with "Already borrowed" (seen under load as a 500);
        # loading an adapter changes the model under a running generation.
        if not self._gen_lock.acquire(timeout=-1 if queue_timeout is None else queue_timeout):
            raise TooManyRequests(f"the model is busy: no generation slot came free within {queue_timeout:g} s; "
                                  "retry shortly", retry_after=5, code="model_busy")
        try:
            if artifact_path:  # from the log: confined to the artifact store before anything is opened
                from eventlog.artifacts import resolve_rel

                resolve_rel(self.data_dir, artifact_path)
            if artifact_path and self._is_full_model(artifact_path):  # full fine-tuning: weights of its own
                loaded, adapter = self._full(artifact_path), None
            else:
                loaded = self._base(base_id)
                adapter = self._with_adapter(loaded, model_id, artifact_path) if artifact_path else None
            return Run(self._pieces(loaded, adapter, messages, max_tokens, temperature, top_p, seed, result,
                                    time_limit), self._gen_lock.release)
        except BaseException:
            self._gen_lock.release()
            raise

    def _pieces(self, loaded: _Loaded, adapter: str | None, messages: list[dict[str, str]], max_tokens: int,
                temperature: float, top_p: float, seed: int | None, result: Generation,
                time_limit: float | None) -> Generator[str, None, None]:
        """Prepare one generation (called with the model's lock held) and return its piece generator."""
        import torch
        StoppingCriteriaList, TextIteratorStreamer = _from_transformers(
            "StoppingCriteriaList", "TextIteratorStreamer")

        tok = loaded.tokenizer
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = tok(text, return_tensors="pt", add_special_tokens=False).to(loaded.model.device)
        result.prompt_tokens = int(inputs["input_ids"].shape[1])
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=120)
        stopper = _Stop(time_limit)
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
                stopper.start()
                with ctx, torch.inference_mode():
                    holder["out"] = model.generate(**kwargs)
            except BaseException as e:  # surfaced to the caller below
                holder["error"] = e
                streamer.on_finalized_text("", stream_end=True)

        def pieces() -> Generator[str, None, None]:
            # Submitted on the first piece asked for: a Run closed before that never starts generating.
            future = self._executor.submit(run)
            text_pieces = []
            try:
                for piece in streamer:
                    if piece:
                        text_pieces.append(piece)
                        yield piece
            finally:
                stopper.stop.set()  # a consumer that stops early (client gone) ends the generation
                future.result()
            if "error" in holder:
                raise holder["error"]
            out = holder["out"]
            result.completion_tokens = int(out.shape[1]) - result.prompt_tokens
            result.text = "".join(text_pieces)
            result.finish_reason = ("length" if result.completion_tokens >= max_tokens or stopper.timed_out
                                    else "stop")

        return pieces()


_server: ModelServer | None = None
_server_lock = threading.Lock()


def server(model_dir: Path, data_dir: Path) -> ModelServer:
    global _server
    with _server_lock:
        if _server is None:
            _server = ModelServer(model_dir, data_dir)
        return _server
