"""Continuous batching for the serving tier: one thread per process owns the models and steps every running
request together, one token per request per step; requests join the running batch as they arrive and leave it
as they finish. Requests for different LoRA adapters of one base share a batch (peft's mixed-adapter forward:
`adapter_names`, one per row; `__base__` for the base itself).

The batch's KV cache is kept left-aligned: every row ends at the same column, shorter rows are padded on the
left (masked out). A new request is prefilled alone, then padded to the batch's length (or the batch to its)
and joined; a finished row is dropped and columns that only padding uses any more are trimmed. Each layer's
cache grows in place (capacity doubling), not by a copy per step.

Text is streamed per request through a queue: ("text", piece), then ("end", finish_reason, usage) or
("error", message). A request whose reader went away is cancelled and leaves the batch at the next step.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("tunelog.serving")

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class Busy(Exception):
    """The waiting line is full: answer 429 with Retry-After."""


@dataclass(eq=False)  # compared by identity
class Request:
    model: str  # the served name: a base model, an adapter or a full model
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    time_limit: float | None = None
    out: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    first_token: float | None = None
    # filled in by the engine
    prompt_ids: list[int] = field(default_factory=list)
    prefix: int = 0  # leading prompt tokens (the system message) whose KV cache is shared with other requests
    namespace: str = ""  # whose requests may share that cache (the caller's `user`)
    generated: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of the decoded text already sent
    deadline: float | None = None
    generator: Any = None
    finish: str | None = None  # why it ended: stop, length, cancelled

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def queue_ms(self) -> float:
        return round(((self.admitted or time.monotonic()) - self.arrived) * 1000, 1)

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token is None else round((self.first_token - self.arrived) * 1000, 1)


class _Layer:
    """One layer's keys and values for the batch: [rows, heads, capacity, dim] buffers, `n` columns used."""

    def __init__(self, keys, values):
        self.n = keys.shape[-2]
        self.k = self._alloc(keys, max(16, self.n * 2))
        self.v = self._alloc(values, max(16, self.n * 2))
        self.k[..., :self.n, :] = keys
        self.v[..., :self.n, :] = values

    @staticmethod
    def _alloc(like, capacity: int):
        return like.new_zeros((like.shape[0], like.shape[1], capacity, like.shape[3]))

    def keys(self):
        return self.k[..., :self.n, :]

    def values(self):
        return self.v[..., :self.n, :]

    def append(self, keys, values):
        m = keys.shape[-2]
        if self.n + m > self.k.shape[-2]:
            capacity = max(self.k.shape[-2] * 2, self.n + m)
            k, v = self._alloc(self.k, capacity), self._alloc(self.v, capacity)
            k[..., :self.n, :] = self.keys()
            v[..., :self.n, :] = self.values()
            self.k, self.v = k, v
        self.k[..., self.n:self.n + m, :] = keys
        self.v[..., self.n:self.n + m, :] = values
        self.n += m
        return self.keys(), self.values()


def _cache_class():
    """A transformers Cache over _Layers (built lazily: transformers is imported only in the serving process)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    class GrowLayer(DynamicLayer):
        def __init__(self, layer: _Layer):
            super().__init__()
            self.layer = layer
            self.is_initialized = True
            self.device = layer.k.device

        @property
        def keys(self):
            return self.layer.keys()

        @keys.setter
        def keys(self, value):  # transformers' own resets; never used while we own the cache
            pass

        @property
        def values(self):
            return self.layer.values()

        @values.setter
        def values(self, value):
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            return self.layer.append(key_states, value_states)

        def get_seq_length(self) -> int:
            return self.layer.n

    class BatchCache(DynamicCache):
        def __init__(self, layers: list[_Layer]):
            super().__init__()
            self.layers = [GrowLayer(x) for x in layers]
            self.layer_class_to_replicate = None

    return BatchCache


@dataclass
class _Model:
    name: str
    tokenizer: Any
    model: Any
    window: int
    eos: set[int]
    adapters: OrderedDict = field(default_factory=OrderedDict)  # name -> bytes (LRU order)
    folders: dict[str, str] = field(default_factory=dict)  # name -> the folder its weights came from
    rows: list[Request] = field(default_factory=list)  # the running batch, in cache row order
    layers: list[_Layer] | None = None
    mask: Any = None  # [rows, n] 1 for real tokens
    positions: Any = None  # [rows] the next token's position
    last: Any = None  # [rows] the last token of each row
    adapter_of: list[str] = field(default_factory=list)  # per row: adapter name or BASE


class Engine:
    """Every model of this serving process, and the thread that runs them.

    `submit(request)` puts a request in line (Busy when `max_waiting` are waiting already); the engine thread
    admits requests while fewer than `max_batch` run, prefills them one at a time between decode steps, and
    steps each model's batch in turn. Adapters are loaded by `load_adapter` (name -> folder) and kept in an
    LRU bounded by `adapter_bytes`; a full model (a full fine-tune) loads as a model of its own."""

    def __init__(self, model_dir: Path, data_dir: Path, *, max_batch: int = 16, max_waiting: int = 64,
                 adapter_bytes: int = 512 * 1024 * 1024, max_models: int = 3, prefill_batch: int = 8):
        self.model_dir, self.data_dir = Path(model_dir), Path(data_dir)
        self.max_batch, self.max_waiting, self.prefill_batch = max_batch, max_waiting, max(1, prefill_batch)
        self.adapter_bytes, self.max_models = adapter_bytes, max_models
        self.models: OrderedDict[str, _Model] = OrderedDict()
        self.served: dict[str, tuple[str, str | None, str | None]] = {}  # name -> (model key, adapter, folder)
        self.waiting: list[Request] = []
        self.lock = threading.Condition()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.steps = 0
        self.tokens = 0
        self.prefix_hits = 0
        self.pending: set[str] = set()  # models and adapters the requests being admitted need (never evicted)
        self.prefix_bytes = 256 * 1024 * 1024  # the prefix cache's bound
        # the KV cache of recent system messages, per model and adapter (LRU): every pupil's chat starts with the
        # same tutor instructions, which are then prefilled once, not once per request
        self.prefixes: OrderedDict[tuple, list] = OrderedDict()
        self.max_prefixes = 16
        self._cache_cls = None

    # ---- the registry of served names ---------------------------------------------------------------------
    def base_names(self) -> list[str]:
        from eventlog.catalog import BASE_MODELS

        return sorted(BASE_MODELS)

    def register(self, name: str, folder: Path) -> str:
        """Serve `folder` (a LoRA adapter of a bundled base, or a full model) as `name`. Idempotent; the weights
        load on first use (in the engine thread)."""
        import json

        folder = Path(folder)
        if (folder / "adapter_config.json").exists():
            base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
            base_id = self._base_id(base)
            with self.lock:
                self.served[name] = (base_id, name, str(folder))
            return "adapter"
        if (folder / "config.json").exists():
            with self.lock:
                self.served[name] = ("full:" + str(folder), None, str(folder))
            return "model"
        raise FileNotFoundError(f"no adapter or model at {folder}")

    def unregister(self, name: str) -> bool:
        with self.lock:
            return self.served.pop(name, None) is not None

    def _base_id(self, base: str) -> str:
        from eventlog.catalog import BASE_MODELS

        if base in BASE_MODELS:
            return base
        name = Path(base).name  # adapters record the folder they were trained on
        if name in BASE_MODELS:
            return name
        for b in BASE_MODELS:
            if b in base:
                return b
        if len(BASE_MODELS) == 1:
            return next(iter(BASE_MODELS))
        raise FileNotFoundError(f"the adapter's base model {base!r} is not one this server has")

    def resolve(self, name: str) -> tuple[str, str | None, str | None]:
        if name in self.served:
            return self.served[name]
        if name in self.base_names():
            return (name, None, None)
        raise KeyError(name)

    # ---- requests -----------------------------------------------------------------------------------------
    def submit(self, req: Request) -> Request:
        self.resolve(req.model)  # KeyError: unknown model
        with self.lock:
            if len(self.waiting) >= self.max_waiting:
                raise Busy(f"{len(self.waiting)} requests are waiting already")
            self.waiting.append(req)
            self.lock.notify_all()
        return req

    def load(self) -> dict[str, int]:
        with self.lock:
            return {"running": sum(len(m.rows) for m in self.models.values()), "waiting": len(self.waiting),
                    "max_batch": self.max_batch, "max_waiting": self.max_waiting,
                    "steps": self.steps, "tokens": self.tokens, "prefix_hits": self.prefix_hits,
                    "engine": "running" if self.thread is not None and self.thread.is_alive() else "stopped"}

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
        if self.thread is not None:
            self.thread.join(30)

    # ---- the engine thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        import torch

        torch.set_grad_enabled(False)
        while True:
            with self.lock:
                while not self.stopping and not self.waiting and not any(m.rows for m in self.models.values()):
                    self.lock.wait()
                if self.stopping:
                    break
            # Arrivals first: prefilled in groups of up to `prefill_batch` (one forward each; a group's first tokens
            # come together, so small groups keep the first of many arrivals early), group after group while any
            # wait and the batch has room, then one decode step for everyone running.
            for _round in range(4):  # at most 4 groups before the next decode step: arrivals never starve it
                with self.lock:
                    running = sum(len(m.rows) for m in self.models.values())
                    admit = self.waiting[:max(0, min(self.prefill_batch, self.max_batch - running))]
                    del self.waiting[:len(admit)]
                admit = [r for r in admit if not r.cancelled.is_set()]  # gone before their turn: never prefilled
                if not admit:
                    break
                try:
                    self._admit(admit)
                except Exception as e:  # noqa: BLE001 - a bug here fails these requests, never the engine
                    log.exception("admission failed")
                    for r in admit:
                        r.out.put(("error", f"generation failed: {type(e).__name__}"))
                    ids = {id(r) for r in admit}
                    for m in list(self.models.values()):  # a batch they half-joined cannot be trusted: it ends
                        if any(id(r) in ids for r in m.rows):
                            self._fail_batch(m, e)
            for m in list(self.models.values()):
                if m.rows:
                    try:
                        self._step(m)
                    except Exception as e:  # noqa: BLE001 - the batch fails, the engine goes on
                        log.exception("decode step failed")
                        self._fail_batch(m, e)
        for m in self.models.values():
            for r in m.rows:
                r.out.put(("error", "the serving process is stopping"))
        for r in self.waiting:
            r.out.put(("error", "the serving process is stopping"))

    def _model(self, key: str) -> _Model:
        m = self.models.get(key)
        if m is not None:
            with self.lock:
                self.models.move_to_end(key)
            return m
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from eventlog.catalog import model_path

        path = Path(key[len("full:"):]) if key.startswith("full:") else model_path(self.model_dir, key)
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if torch.cuda.is_available():
            model = model.to("cuda")
        model.eval()
        tok = AutoTokenizer.from_pretrained(path)
        window = int(getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None) or 2048)
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tok.eos_token_id is not None:
            eos.add(tok.eos_token_id)
        idle = [k for k, x in self.models.items() if not x.rows and k.startswith("full:") and k not in self.pending]
        while len(self.models) >= self.max_models and idle:  # full models are as large as a base: keep few
            with self.lock:  # /health counts the models' rows from other threads
                del self.models[idle.pop(0)]
        m = _Model(key, tok, model, window, eos)
        with self.lock:
            self.models[key] = m
        return m

    def _adapter(self, m: _Model, name: str, folder: str) -> None:
        from peft import PeftModel

        if name in m.adapters:
            if m.folders.get(name) == folder:
                m.adapters.move_to_end(name)
                return
            if name in m.adapter_of:  # the name was given to another folder while this one still answers
                raise RuntimeError(f"{name!r} is being answered from another folder; retry when it is done")
            self._drop_adapter(m, name)  # the name now means another folder: its weights and prefixes go
        if isinstance(m.model, PeftModel):
            m.model.load_adapter(folder, adapter_name=name)
        else:
            m.model = PeftModel.from_pretrained(m.model, folder, adapter_name=name)
        m.model.eval()
        size = sum(f.stat().st_size for f in Path(folder).glob("adapter_model.*"))
        m.adapters[name] = size
        m.folders[name] = folder
        in_use = set(m.adapter_of) | self.pending
        while sum(m.adapters.values()) > self.adapter_bytes and len(m.adapters) > 1:
            old = next((a for a in m.adapters if a not in in_use and a != name), None)
            if old is None:
                break
            self._drop_adapter(m, old)

    def _drop_adapter(self, m: _Model, name: str) -> None:
        m.model.delete_adapter(name)
        m.adapters.pop(name, None)
        m.folders.pop(name, None)
        for key in [k for k in self.prefixes if k[0] == m.name and k[1] == name]:
            del self.prefixes[key]

    def _prepare(self, req: Request) -> tuple[_Model, str] | None:
        """Resolve, load and tokenize one request (None, and an error sent, when it cannot run)."""
        import torch

        if req.cancelled.is_set():
            return None
        req.admitted = time.monotonic()
        try:
            key, adapter, folder = self.resolve(req.model)
            m = self._model(key)
            if adapter:
                self._adapter(m, adapter, folder)
            text = m.tokenizer.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
            req.prompt_ids = m.tokenizer(text, add_special_tokens=False)["input_ids"]
            if req.messages[0]["role"] == "system" and len(req.messages) > 1:
                head = m.tokenizer.apply_chat_template(req.messages[:1], tokenize=False)
                ids = m.tokenizer(head, add_special_tokens=False)["input_ids"]
                if 16 <= len(ids) <= 2048 and len(ids) < len(req.prompt_ids) and req.prompt_ids[:len(ids)] == ids:
                    req.prefix = len(ids)
            if len(req.prompt_ids) + 1 > m.window:
                req.out.put(("error", f"the prompt has {len(req.prompt_ids)} tokens; the model's window is "
                                      f"{m.window}"))
                return None
            if req.time_limit:
                req.deadline = time.monotonic() + req.time_limit
            if req.temperature > 0:
                req.generator = torch.Generator(device=m.model.device)
                req.generator.manual_seed(req.seed if req.seed is not None else int.from_bytes(os.urandom(4), "little"))
        except Exception as e:  # noqa: BLE001 - this request fails; the others go on
            log.exception("preparing a request failed")
            req.out.put(("error", f"generation failed: {type(e).__name__}: {e}"[:300]))
            return None
        return m, adapter or BASE

    def _admit(self, reqs: list[Request]) -> None:
        """Prefill requests of one model together (left-padded, one forward), then join them to its batch; each
        answers its first token at once."""
        import torch
        from transformers import DynamicCache

        self.pending = set()
        ready = []
        for r in reqs:
            p = self._prepare(r)
            if p is not None:
                ready.append((r, p))
                self.pending |= {p[0].name, p[1]}
        groups: dict[tuple, list[tuple[Request, str]]] = {}
        for r, (m, adapter) in ready:  # rows sharing a cached system message share its KV: grouped by it
            # per caller namespace (`user`: the API sends the project), so a hit never tells one project what
            # another asked
            shared = (adapter, r.namespace, tuple(r.prompt_ids[:r.prefix])) if r.prefix else None
            groups.setdefault((m.name, shared), []).append((r, adapter))
        for (key, shared), group in groups.items():
            m = self.models[key]
            rows = [r for r, _ in group]
            dev = m.model.device
            kwargs: dict[str, Any] = {}
            if m.adapters:
                kwargs["adapter_names"] = [a for _, a in group]
            try:
                cache = DynamicCache()
                start_mask = None
                p = 0
                if shared is not None:  # the system message's KV, computed once, copied to each row
                    prefix = self._prefix(m, shared)
                    p = len(shared[2])
                    for i, (k, v) in enumerate(prefix):
                        cache.update(k.expand(len(rows), -1, -1, -1).contiguous(),
                                     v.expand(len(rows), -1, -1, -1).contiguous(), i)
                    start_mask = torch.ones((len(rows), p), dtype=torch.long, device=dev)
                rest = [r.prompt_ids[p:] for r in rows]
                width = max(len(x) for x in rest)
                pad = m.tokenizer.pad_token_id if m.tokenizer.pad_token_id is not None else 0
                ids = torch.tensor([[pad] * (width - len(x)) + x for x in rest], device=dev)
                mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in rest], device=dev)
                positions = (p + mask.cumsum(dim=1) - 1).clamp(min=p)
                if start_mask is not None:
                    mask = torch.cat([start_mask, mask], dim=1)
                # logits of the last position only (left padding: every row ends there)
                out = m.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                              use_cache=True, logits_to_keep=1, **kwargs)
                tokens = self._sample(rows, out.logits[:, -1, :])
                layers = [(layer.keys, layer.values) for layer in cache.layers]
            except Exception as e:  # noqa: BLE001 - these requests fail; the batch goes on
                log.exception("prefill failed")
                for r in rows:
                    r.out.put(("error", f"generation failed: {type(e).__name__}: {e}"[:300]))
                continue
            start = len(m.rows)
            self._join(m, rows, [a for _, a in group], layers, mask,
                       torch.tensor([len(r.prompt_ids) for r in rows], device=dev), tokens)
            for i, t in enumerate(tokens):
                self._emit(m, start + i, t)
            self._finish_done(m)

    def _prefix(self, m: _Model, shared: tuple) -> list:
        """The KV cache (one row) of a system message for an adapter, from the LRU or computed now."""
        import torch
        from transformers import DynamicCache

        key = (m.name, *shared)
        hit = self.prefixes.get(key)
        if hit is not None:
            self.prefixes.move_to_end(key)
            self.prefix_hits += 1
            return hit
        adapter, _namespace, ids = shared
        kwargs: dict[str, Any] = {"adapter_names": [adapter]} if m.adapters else {}
        cache = DynamicCache()
        m.model(input_ids=torch.tensor([list(ids)], device=m.model.device), past_key_values=cache, use_cache=True,
                logits_to_keep=1, **kwargs)
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        self.prefixes[key] = layers
        size = lambda kv: sum(k.numel() * k.element_size() * 2 for k, _ in kv)  # noqa: E731
        while len(self.prefixes) > 1 and (len(self.prefixes) > self.max_prefixes or
                                          sum(size(x) for x in self.prefixes.values()) > self.prefix_bytes):
            self.prefixes.popitem(last=False)
        return layers

    def _join(self, m: _Model, reqs: list[Request], adapters: list[str], layers: list, row_mask, lengths,
              tokens: list[int]) -> None:
        """Add prefilled rows (their cache `layers`, [rows, heads, n, dim] each, and mask) to the batch: whichever
        is shorter is padded on the left."""
        import torch

        n_new = layers[0][0].shape[-2]
        dev = layers[0][0].device
        if m.layers is None or not m.rows:
            m.layers = [_Layer(k, v) for k, v in layers]
            m.mask = row_mask
            m.positions = lengths
            m.last = torch.tensor(tokens, device=dev)
            m.rows, m.adapter_of = list(reqs), list(adapters)
            return
        n_batch = m.layers[0].n
        width = max(n_batch, n_new)
        merged = []
        for layer, (k, v) in zip(m.layers, layers, strict=True):
            bk, bv = layer.keys(), layer.values()
            if n_batch < width:
                bk, bv = _pad_left(bk, width - n_batch), _pad_left(bv, width - n_batch)
            if n_new < width:
                k, v = _pad_left(k, width - n_new), _pad_left(v, width - n_new)
            merged.append(_Layer(torch.cat([bk, k]), torch.cat([bv, v])))
        mask = m.mask
        if n_batch < width:
            mask = torch.cat([mask.new_zeros((mask.shape[0], width - n_batch)), mask], dim=1)
        if n_new < width:
            row_mask = torch.cat([row_mask.new_zeros((row_mask.shape[0], width - n_new)), row_mask], dim=1)
        m.layers = merged
        m.mask = torch.cat([mask, row_mask])
        m.positions = torch.cat([m.positions, lengths])
        m.last = torch.cat([m.last, torch.tensor(tokens, device=dev)])
        m.rows.extend(reqs)
        m.adapter_of.extend(adapters)

    def _step(self, m: _Model) -> None:
        import torch

        if self._cache_cls is None:
            self._cache_cls = _cache_class()
        cache = self._cache_cls(m.layers)
        mask = torch.cat([m.mask, m.mask.new_ones((m.mask.shape[0], 1))], dim=1)
        kwargs: dict[str, Any] = {}
        if m.adapters:
            kwargs["adapter_names"] = list(m.adapter_of)
        out = m.model(input_ids=m.last[:, None], attention_mask=mask, position_ids=m.positions[:, None],
                      past_key_values=cache, use_cache=True, logits_to_keep=1, **kwargs)
        tokens = self._sample(m.rows, out.logits[:, -1, :])
        m.mask = mask
        m.positions = m.positions + 1
        m.last = torch.tensor(tokens, device=m.last.device)
        self.steps += 1
        for i, t in enumerate(tokens):
            self._emit(m, i, t)
        self._finish_done(m)

    def _sample(self, rows: list[Request], logits) -> list[int]:
        import torch

        out = logits.argmax(dim=-1).tolist()
        for i, r in enumerate(rows):
            if r.temperature < 1e-5:  # greedy (a tiny temperature would overflow the division)
                continue
            try:
                probs = torch.softmax(logits[i].double() / r.temperature, dim=-1)
                probs = torch.nan_to_num(probs, nan=0.0, posinf=0.0, neginf=0.0)
                if r.top_p < 1.0:
                    sorted_p, idx = torch.sort(probs, descending=True)
                    keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < r.top_p
                    keep[0] = True  # the most likely token always stays
                    probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
                if float(probs.sum()) > 0:
                    out[i] = int(torch.multinomial(probs, 1, generator=r.generator).item())
            except RuntimeError:  # a row's sampling never fails the batch: that row takes the likeliest token
                log.warning("sampling failed for one row; it took the most likely token")
        return out

    def _emit(self, m: _Model, i: int, token: int) -> None:
        """Record row i's new token; send the text it completes (held back while it ends mid-character)."""
        r = m.rows[i]
        if r.first_token is None:
            r.first_token = time.monotonic()
        if token in m.eos:
            r.finish = "stop"
            return
        r.generated.append(token)
        self.tokens += 1
        text = m.tokenizer.decode(r.generated, skip_special_tokens=True)
        if not text.endswith("\ufffd") and len(text) > r.emitted:
            r.out.put(("text", text[r.emitted:]))
            r.emitted = len(text)
        full = len(r.generated) >= r.max_tokens or len(r.prompt_ids) + len(r.generated) + 1 >= m.window
        if full or (r.deadline is not None and time.monotonic() > r.deadline):  # tokens, window or time
            r.finish = "length"
        elif r.cancelled.is_set():
            r.finish = "cancelled"

    def _finish_done(self, m: _Model) -> None:
        import torch

        done = [i for i, r in enumerate(m.rows) if r.finish or r.cancelled.is_set()]
        if not done:
            return
        for i in done:
            r = m.rows[i]
            text = m.tokenizer.decode(r.generated, skip_special_tokens=True)
            if len(text) > r.emitted:
                r.out.put(("text", text[r.emitted:]))
                r.emitted = len(text)
            reason = r.finish or "cancelled"
            r.out.put(("end", reason, {"prompt_tokens": len(r.prompt_ids), "completion_tokens": len(r.generated),
                                       "queue_ms": r.queue_ms, "ttft_ms": r.ttft_ms}))
        keep = [i for i in range(len(m.rows)) if i not in set(done)]
        if not keep:
            self._reset(m)
            return
        idx = torch.tensor(keep, device=m.last.device)
        mask = m.mask[idx]
        used = int(mask.sum(dim=0).nonzero()[0].item())  # leading columns only padding uses now
        m.layers = [_Layer(layer.keys()[idx][..., used:, :], layer.values()[idx][..., used:, :])
                    for layer in m.layers]
        m.mask = mask[:, used:]
        m.positions, m.last = m.positions[idx], m.last[idx]
        m.rows = [m.rows[i] for i in keep]
        m.adapter_of = [m.adapter_of[i] for i in keep]

    def _fail_batch(self, m: _Model, e: BaseException) -> None:
        for r in m.rows:
            r.out.put(("error", f"generation failed: {type(e).__name__}"))
        self._reset(m)

    def _reset(self, m: _Model) -> None:
        m.rows, m.adapter_of, m.layers, m.mask, m.positions, m.last = [], [], None, None, None, None


def _pad_left(t, n: int):
    import torch

    return torch.cat([t.new_zeros((*t.shape[:-2], n, t.shape[-1])), t], dim=-2)
