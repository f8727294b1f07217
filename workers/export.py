"""RQ entry points for a model's files (ids in, events out).

`export_model(model_id, export_id)`: the fine-tuned model as one plain transformers folder (the LoRA adapter
merged into its base, float32, safetensors, with the tokenizer) under
`artifacts/<job_id>/exports/<export_id>/merged/`, and for `gguf` also `model.gguf` (llama architecture,
f16, written with the `gguf` package as llama.cpp's convert_hf_to_gguf.py writes it). Ends with
ModelExported or ModelExportFailed on the model's stream; a run that finds either does nothing.

`remove_model_artifacts(model_id)`: after ModelDeleted, removes `artifacts/<job_id>/` (model, checkpoints,
exports), forgets the job's checkpoints (CheckpointDeleted) and appends ModelArtifactsRemoved.

Every append is optimistic, at the stream's current version, and decided again on a concurrent append.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import Any

from domain.errors import ConcurrencyConflict
from domain.events import job_stream, model_stream
from eventlog import artifacts
from eventlog.bootstrap import Services, bootstrap
from eventlog.catalog import model_path
from eventlog.store import NewEvent, RecordedEvent

log = logging.getLogger("tunelog.export")
APPEND_TRIES = 50
_PATH = re.compile(r"(?:/[\w.@+-]+){2,}/?")  # server paths are taken out of errors every project key reads


def _now() -> int:
    return int(time.time())


class ExportError(Exception):
    """A reason the export cannot be made, told to the user as the export's error."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _append_fresh(svc: Services, stream: str, decide: Callable[[list[RecordedEvent]], list[NewEvent]]) -> bool:
    """Append what `decide` makes of the stream as it is now, at its current version; on a concurrent
    append, read and decide again. `decide` returning nothing means there is nothing to append (False)."""
    for _ in range(APPEND_TRIES):
        events = svc.store.read_stream(stream)
        new = decide(events)
        if not new:
            return False
        try:
            svc.store.append(stream, events[-1].stream_version if events else 0, new)
            return True
        except ConcurrencyConflict:
            continue
    raise RuntimeError(f"{stream} kept changing; the dispatcher retries")


def _of(events: list[RecordedEvent], *types: str, export_id: str | None = None) -> list[RecordedEvent]:
    return [e for e in events if e.type in types and (export_id is None or e.data.get("id") == export_id)]


# ---- export --------------------------------------------------------------------------------------------
def export_model(model_id: str, export_id: str) -> str:
    svc = bootstrap(pool_size=2)
    s = svc.settings
    stream = model_stream(model_id)
    events = svc.store.read_stream(stream)
    registered = next(iter(_of(events, "ModelRegistered")), None)
    request = next(iter(_of(events, "ModelExportRequested", export_id=export_id)), None)
    if registered is None or request is None:
        return "skipped: no such export"
    meta = {"actor": "worker:export", "correlation_id": export_id, "causation_id": str(request.global_position)}
    fmt = request.data["format"]

    def finished(evs: list[RecordedEvent]) -> bool:
        return bool(_of(evs, "ModelExported", "ModelExportFailed", export_id=export_id))

    def failure(code: str, message: str) -> Callable[[list[RecordedEvent]], list[NewEvent]]:
        return lambda evs: [] if finished(evs) else [NewEvent("ModelExportFailed", {
            "id": export_id, "model": model_id, "error": {"code": code, "message": message, "param": None},
            "at": _now()}, meta)]

    if finished(events):
        return "skipped: already done"
    if _of(events, "ModelDeleted"):
        _append_fresh(svc, stream, failure("model_deleted", "the model was deleted before it was exported"))
        return "failed"

    def start(evs: list[RecordedEvent]) -> list[NewEvent]:
        # counted before the work: an export that kills its work horse is failed by the dispatcher after
        # max_attempts tries instead of being re-enqueued forever
        if finished(evs) or _of(evs, "ModelDeleted"):
            return []
        attempt = len(_of(evs, "ModelExportStarted", export_id=export_id)) + 1
        return [NewEvent("ModelExportStarted", {"id": export_id, "model": model_id, "attempt": attempt,
                                                "at": _now()}, meta)]

    if not _append_fresh(svc, stream, start):
        return "skipped: finished or deleted meanwhile"
    job_id = registered.data.get("job_id")
    try:
        rel = artifacts.export_dir_rel(job_id, export_id)
        source = artifacts.resolve_rel(s.data_dir, registered.data.get("artifact_path") or "")
        if not source.is_dir():
            raise ExportError("artifacts_missing", "the model's files are missing from the artifact store")
        _limit_threads(s.cpu_workers)
        # one run at a time per export: a re-delivered RQ job (Redis lost, a stale start) waits here instead
        # of deleting the other run's half-written folder
        from filelock import FileLock

        with FileLock(str((s.data_dir / rel).with_name(f".{export_id}.lock")), timeout=EXPORT_LOCK_WAIT):
            if finished(svc.store.read_stream(stream)):
                return "skipped: already done"
            files = build_export(model_path(s.model_dir, registered.data["base_model"]), source,
                                 s.data_dir / rel, fmt, model_id)
    except ExportError as e:
        _append_fresh(svc, stream, failure(e.code, e.message))
        return "failed"
    except Exception as e:  # noqa: BLE001 - a bug or a broken file: reported on the export, not a crashed horse
        log.exception("export %s of %s failed", export_id, model_id)
        _append_fresh(svc, stream, failure("export_failed", _PATH.sub("<path>", f"{type(e).__name__}: {e}")[:500]))
        return "failed"

    def done(evs: list[RecordedEvent]) -> list[NewEvent]:
        if finished(evs) or _of(evs, "ModelDeleted"):
            return []
        return [NewEvent("ModelExported", {"id": export_id, "model": model_id, "format": fmt, "path": rel,
                                           "files": files, "at": _now()}, meta)]

    if _append_fresh(svc, stream, done):
        return rel
    if not _of(svc.store.read_stream(stream), "ModelDeleted"):
        return "skipped: another run finished it"  # its files are the model's: never remove them here
    # deleted while it ran: the removal may have run before these files were written
    _append_fresh(svc, stream, failure("model_deleted", "the model was deleted while it was exported"))
    if artifacts.JOB_ID.match(job_id or ""):
        artifacts.remove_job_artifacts(s.data_dir, job_id)
    return "failed"


EXPORT_LOCK_WAIT = 3600  # seconds a second run of one export waits for the first (the export's RQ timeout)


def _limit_threads(cpu_workers: int) -> None:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // max(1, cpu_workers)))  # share the cores


def build_export(base: Path, source: Path, out: Path, fmt: str, name: str) -> list[str]:
    """Write the export into `out` (built aside, then renamed: a half-written export never appears) and
    return its files, relative to `out`."""
    tmp = out.with_name(f".{out.name}.tmp")
    for d in (tmp, out):  # left by an attempt that died
        if d.exists():
            shutil.rmtree(d)
    tmp.mkdir(parents=True)
    try:
        merge(base, source, tmp / "merged")
        if fmt == "gguf":
            write_gguf(tmp / "merged", tmp / "model.gguf", name)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def merge(base: Path, source: Path, dest: Path) -> None:
    """A peft adapter merged into its base (float32, on the CPU), or a full model's folder copied; with
    the tokenizer either way."""
    if (source / "adapter_config.json").is_file():
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, source).merge_and_unload()
        model.save_pretrained(dest, safe_serialization=True)
        tokenizer_from = source if (source / "tokenizer_config.json").is_file() else base
        AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(dest)
    elif (source / "config.json").is_file() and any(source.glob("*.safetensors")):
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.pth", "optimizer*",
                                                                    "training_args*"))
    else:
        raise ExportError("artifacts_missing", "the model's folder holds neither a peft adapter nor a "
                          "safetensors model")


# ---- GGUF -----------------------------------------------------------------------------------------------
# llama.cpp names a BPE pre-tokenizer by the sha256 of the token ids of this text (convert_hf_to_gguf.py,
# get_vocab_base_pre); a GGUF without a pre-tokenizer it knows would tokenize differently there.
_CHKTXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
           "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
           "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
           "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL")
_KNOWN_PRE = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}


def _permute(w, n_head: int):
    """Q and K rows reordered for llama.cpp's rotary embedding layout (convert_hf_to_gguf.py's permute;
    transformers reverses it when it loads a GGUF)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(folder: Path, out: Path, name: str, f16: bool = True) -> None:
    """A llama-architecture transformers folder (safetensors, BPE tokenizer.json) as one GGUF file: 2-D
    weights in f16 (or f32), norms in f32. Tensors are streamed one at a time (a model is never held twice)."""
    import gguf
    import numpy as np
    from safetensors import safe_open
    from transformers import AutoTokenizer

    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise ExportError("unsupported_format", f"GGUF export supports the llama architecture; this model is "
                          f"{cfg.get('model_type')!r}")
    rope = cfg.get("rope_parameters") or {"rope_theta": cfg.get("rope_theta", 10000.0),
                                          "rope_type": (cfg.get("rope_scaling") or {}).get("rope_type", "default")}
    if rope.get("rope_type", "default") != "default":
        raise ExportError("unsupported_format", f"GGUF export does not support rope scaling {rope['rope_type']!r}")
    if not (folder / "tokenizer.json").is_file() or \
            json.loads((folder / "tokenizer.json").read_text())["model"]["type"] != "BPE":
        raise ExportError("unsupported_format", "GGUF export needs a byte-level BPE tokenizer (tokenizer.json)")
    tok = AutoTokenizer.from_pretrained(folder)
    pre = _KNOWN_PRE.get(sha256(str(tok.encode(_CHKTXT)).encode()).hexdigest())
    if pre is None:
        raise ExportError("unsupported_format", "GGUF export: llama.cpp does not know this tokenizer's "
                          "pre-tokenizer (only SmolLM, Llama 3 and GPT-2 ones are mapped)")
    n_head, n_layers, hidden = cfg["num_attention_heads"], cfg["num_hidden_layers"], cfg["hidden_size"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or hidden // n_head

    w = gguf.GGUFWriter(out, "llama")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    if head_dim != hidden // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(float(rope["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)

    # the vocabulary by id, as convert_hf_to_gguf.py's get_vocab_base writes it
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(cfg["vocab_size"]):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            text = by_id[i] if added[i].normalized else tok.decode(tok.encode(by_id[i], add_special_tokens=False))
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True)
    special.add_to_gguf(w, quiet=True)
    if "bos" not in special.add_special_token:  # say what the tokenizer does: llama.cpp's default differs
        w.add_add_bos_token(tok.bos_token_id is not None and tok.encode("a")[:1] == [tok.bos_token_id])

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    handles = [safe_open(str(f), framework="pt") for f in sorted(folder.glob("*.safetensors"))]
    plan: list[tuple[str, Any, str, np.dtype]] = []  # (gguf name, handle, hf name, dtype)
    for h in handles:
        for hf_name in h.keys():  # noqa: SIM118 - a safetensors handle is not iterable
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            if hf_name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
                continue  # tied: llama.cpp (and transformers) use token_embd
            gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gname is None:
                raise ExportError("unsupported_format", f"GGUF export: no llama tensor for {hf_name!r}")
            shape = h.get_slice(hf_name).get_shape()
            plan.append((gname, h, hf_name, np.dtype(np.float16 if f16 and len(shape) == 2 else np.float32)))
            w.add_tensor_info(gname, shape, plan[-1][3], int(np.prod(shape)) * plan[-1][3].itemsize)
    if not any(p[0] == "token_embd.weight" for p in plan):
        raise ExportError("artifacts_missing", "the merged model has no safetensors weights")
    try:
        w.write_header_to_file(out)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for gname, h, hf_name, dtype in plan:
            t = h.get_tensor(hf_name).float().numpy()
            if gname.endswith(("attn_q.weight", "attn_q.bias")):
                t = _permute(t, n_head)
            elif gname.endswith(("attn_k.weight", "attn_k.bias")):
                t = _permute(t, n_kv)
            w.write_tensor_data(np.ascontiguousarray(t.astype(dtype)))
    finally:
        w.close()


# ---- removal --------------------------------------------------------------------------------------------
def remove_model_artifacts(model_id: str) -> str:
    svc = bootstrap(pool_size=2)
    s = svc.settings
    stream = model_stream(model_id)
    events = svc.store.read_stream(stream)
    registered = next(iter(_of(events, "ModelRegistered")), None)
    deleted = next(iter(_of(events, "ModelDeleted")), None)
    if registered is None or deleted is None:
        return "skipped: the model is not deleted"
    if _of(events, "ModelArtifactsRemoved"):
        return "skipped: already removed"
    meta = {"actor": "worker:export", "correlation_id": model_id, "causation_id": str(deleted.global_position)}
    job_id = registered.data.get("job_id")
    if isinstance(job_id, str) and artifacts.JOB_ID.match(job_id):
        artifacts.remove_job_artifacts(s.data_dir, job_id)
        _forget_checkpoints(svc, job_id, meta)
    elif registered.data.get("artifact_path"):  # no job folder to remove: only the model's own folder
        try:
            folder = artifacts.resolve_rel(s.data_dir, registered.data["artifact_path"])
        except ValueError:
            folder = None
        if folder is not None and folder.is_dir():
            shutil.rmtree(folder)
    _append_fresh(svc, stream, lambda evs: [] if _of(evs, "ModelArtifactsRemoved") else [
        NewEvent("ModelArtifactsRemoved", {"id": model_id, "at": _now()}, meta)])
    return "removed"


def _forget_checkpoints(svc: Services, job_id: str, meta: dict[str, Any]) -> None:
    """The job's checkpoints went with its folder: CheckpointDeleted for each one still listed, so none
    resolves or is listed any more."""
    def decide(evs: list[RecordedEvent]) -> list[NewEvent]:
        listed = {e.data["id"]: e.data["step"] for e in _of(evs, "CheckpointSaved")}
        for e in _of(evs, "CheckpointDeleted"):
            listed.pop(e.data["id"], None)
        return [NewEvent("CheckpointDeleted", {"id": cid, "step": step, "at": _now(), "keep": 0}, meta)
                for cid, step in listed.items()]

    _append_fresh(svc, job_stream(job_id), decide)


__all__ = ["export_model", "remove_model_artifacts"]
