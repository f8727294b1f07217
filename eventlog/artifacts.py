"""The artifact store: where a training job's files live, as a local folder under `data_dir/artifacts`.

    artifacts/<job_id>/
      model/                          the trained model: a peft adapter (adapter_config.json) or a full
                                      transformers folder (config.json + model.safetensors), with its tokenizer
      training_config.json, metrics.json
      checkpoints/checkpoint-<step>/
      exports/<export_id>/            merged/ (safetensors + tokenizer), model.gguf

Paths are only ever built from validated ids, never from unsanitized input, and a relative path read from
the log is resolved (symlinks and `..` first) and refused unless it stays inside `data_dir/artifacts`.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

JOB_ID = re.compile(r"^ftjob-[0-9a-f]{24}$")
EXPORT_ID = re.compile(r"^export-[0-9a-f]{24}$")
ROOT = "artifacts"


class ArtifactPathError(ValueError):
    """A path that is not (or would not stay) inside the artifact store."""


def _job(job_id: str) -> str:
    if not isinstance(job_id, str) or not JOB_ID.match(job_id):
        raise ArtifactPathError(f"not a fine-tuning job id: {job_id!r}")
    return job_id


def _export(export_id: str) -> str:
    if not isinstance(export_id, str) or not EXPORT_ID.match(export_id):
        raise ArtifactPathError(f"not an export id: {export_id!r}")
    return export_id


def root(data_dir: Path) -> Path:
    return Path(data_dir) / ROOT


def job_dir(data_dir: Path, job_id: str) -> Path:
    return root(data_dir) / _job(job_id)


def model_dir_rel(job_id: str) -> str:
    """The trained model's folder, relative to the data dir (as `ModelRegistered.artifact_path` holds it)."""
    return f"{ROOT}/{_job(job_id)}/model"


def checkpoints_dir(data_dir: Path, job_id: str) -> Path:
    return job_dir(data_dir, job_id) / "checkpoints"


def export_dir_rel(job_id: str, export_id: str) -> str:
    return f"{ROOT}/{_job(job_id)}/exports/{_export(export_id)}"


def export_dir(data_dir: Path, job_id: str, export_id: str) -> Path:
    return Path(data_dir) / export_dir_rel(job_id, export_id)


def resolve_rel(data_dir: Path, rel: str) -> Path:
    """`data_dir/rel`, resolved, if it lies strictly inside `data_dir/artifacts`; ArtifactPathError otherwise.
    The answer does not depend on what exists outside the store."""
    refused = ArtifactPathError(f"{rel!r} is not a path inside the artifact store")
    if not isinstance(rel, str) or not rel or "\x00" in rel or len(rel) > 4096 or Path(rel).is_absolute():
        raise refused
    try:
        store = root(data_dir).resolve()
        path = (Path(data_dir) / rel).resolve()
    except (OSError, RuntimeError, ValueError):  # symlink loops, undecodable names
        raise refused from None
    if path == store or not path.is_relative_to(store):
        raise refused
    return path


def remove_job_artifacts(data_dir: Path, job_id: str) -> bool:
    """Remove `artifacts/<job_id>/` (model, checkpoints, exports). True if something was removed.

    The folder is first renamed aside (one atomic step: nothing ever loads a half-deleted model), then
    deleted; a crash in between leaves the renamed folder, which the next call removes."""
    d = job_dir(data_dir, job_id)
    trash = root(data_dir) / f".removing-{job_id}"
    removed = False
    if d.is_symlink():  # never follow a link out of the store: remove the link itself
        d.unlink()
        removed = True
    elif d.exists():
        if trash.exists():
            shutil.rmtree(trash)
        d.rename(trash)
        removed = True
    if trash.exists():
        shutil.rmtree(trash)
    return removed
