"""Settings read from the environment, once, in one place (nothing is built at import time)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    redis_url: str
    port: int = 8000
    api_key: str | None = None
    max_upload_bytes: int = 50 * 1024 * 1024
    min_examples: int = 10
    lease_seconds: float = 10.0
    max_attempts: int = 3
    training_queue: str = "cpu"
    max_seq_len: int = 1024
    max_batch_tokens: int = 65536  # batch_size x max_seq_len of one training step, per process
    cpu_workers: int = 2
    stall_seconds: float = 900.0
    dspy_max_lm_calls: int = 20_000  # a DSPy job whose optimizer would ask more (estimated at create) is refused
    dspy_max_seconds: float = 12 * 3600.0  # a DSPy job running longer (from its first start) is stopped
    model_dir: Path = field(default_factory=lambda: ROOT / ".data" / "models")

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"


def default_training_queue() -> str:
    """Local training goes to the `gpu` queue when a CUDA device is visible, else to `cpu`."""
    if os.environ.get("TUNELOG_TRAINING_QUEUE"):
        return os.environ["TUNELOG_TRAINING_QUEUE"]
    return "gpu" if Path("/dev/nvidia0").exists() or os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu"


def directories() -> tuple[Path, Path]:
    """(data directory, model directory) from TUNELOG_DATA_DIR and TUNELOG_MODEL_DIR: all a serving replica
    needs, without the database and Redis URLs that `load` requires."""
    data_dir = Path(os.environ.get("TUNELOG_DATA_DIR") or ROOT / ".data").resolve()
    return data_dir, Path(os.environ.get("TUNELOG_MODEL_DIR") or data_dir / "models").resolve()


def load() -> Settings:
    data_dir, model_dir = directories()
    db = os.environ.get("DATABASE_URL", "")
    redis = os.environ.get("REDIS_URL", "")
    if not db or not redis:
        raise RuntimeError(
            "DATABASE_URL and REDIS_URL must be set (scripts/serve sets them for the embedded servers)"
        )
    return Settings(
        data_dir=data_dir,
        database_url=db,
        redis_url=redis,
        port=_int("TUNELOG_PORT", 8000),
        api_key=os.environ.get("TUNELOG_API_KEY") or None,
        max_upload_bytes=_int("TUNELOG_MAX_UPLOAD_BYTES", 50 * 1024 * 1024),
        min_examples=_int("TUNELOG_MIN_EXAMPLES", 10),
        lease_seconds=_float("TUNELOG_LEASE_SECONDS", 10.0),
        max_attempts=_int("TUNELOG_MAX_ATTEMPTS", 3),
        training_queue=default_training_queue(),
        max_seq_len=_int("TUNELOG_MAX_SEQ_LEN", 1024),
        max_batch_tokens=_int("TUNELOG_MAX_BATCH_TOKENS", 65536),
        cpu_workers=max(1, _int("TUNELOG_CPU_WORKERS", 2)),
        stall_seconds=_float("TUNELOG_STALL_SECONDS", 900.0),
        dspy_max_lm_calls=_int("TUNELOG_DSPY_MAX_LM_CALLS", 20_000),
        dspy_max_seconds=_float("TUNELOG_DSPY_MAX_SECONDS", 12 * 3600.0),
        model_dir=model_dir,
    )


def psycopg_url(url: str) -> str:
    """psycopg wants postgresql://; SQLAlchemy spells the driver in the scheme."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def sqlalchemy_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://"):]
    return url
