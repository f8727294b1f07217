"""Event types (past tense, versioned by name) and upcasters for old shapes.

Events are stored as `type` + `data` (a JSON object). The dataclasses below are the shapes the
code writes; `upcast` turns any older stored shape into the current one on read.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


# stream ids
def job_stream(job_id: str) -> str:
    return f"job-{job_id}"


def file_stream(file_id: str) -> str:
    return f"file-{file_id}"


def key_stream(key_id: str) -> str:
    return f"key-{key_id}"


def model_stream(model_id: str) -> str:
    return f"model-{model_id}"


@dataclass(frozen=True)
class Event:
    def to_data(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def type(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class FileUploaded(Event):
    id: str
    project: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    created_at: int
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FileDeleted(Event):
    id: str
    deleted_at: int


@dataclass(frozen=True)
class KeyCreated(Event):
    id: str
    key_hash: str
    name: str
    role: str
    project: str
    created_at: int


@dataclass(frozen=True)
class KeyRevoked(Event):
    id: str
    revoked_at: int


@dataclass(frozen=True)
class JobCreated(Event):
    id: str
    project: str
    model: str
    backend: str
    queue: str
    training_file: str
    training_file_sha256: str
    validation_file: str | None
    validation_file_sha256: str | None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    suffix: str | None
    seed: int
    metadata: dict[str, str] | None
    created_at: int
    rerun_of: str | None = None  # the job whose spec this one re-submits (POST .../rerun)


@dataclass(frozen=True)
class JobStarted(Event):
    attempt: int
    worker: str
    started_at: int


@dataclass(frozen=True)
class JobProgressed(Event):
    """A metrics event: one training step's numbers."""

    step: int
    total_steps: int
    epoch: float
    train_loss: float
    learning_rate: float
    at: int
    valid_loss: float | None = None
    tokens_per_second: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None  # on the whole validation file, at the end
    full_valid_mean_token_accuracy: float | None = None
    estimated_finish: int | None = None  # unix seconds, from the measured step times
    remote_id: str | None = None  # a delegated job's: the provider's event id (mirrored exactly once)


@dataclass(frozen=True)
class JobMessage(Event):
    level: str
    message: str
    at: int
    remote_id: str | None = None  # a delegated job's: the provider's event id (mirrored exactly once)


@dataclass(frozen=True)
class CheckpointSaved(Event):
    id: str
    job_id: str
    project: str
    step: int
    path: str
    fine_tuned_model_checkpoint: str
    metrics: dict[str, Any]
    at: int


@dataclass(frozen=True)
class CheckpointDeleted(Event):
    """A checkpoint rotated away (the last `keep` are kept) or removed with its model."""

    id: str
    step: int
    at: int
    keep: int = 3


@dataclass(frozen=True)
class PauseRequested(Event):
    actor: str
    at: int


@dataclass(frozen=True)
class JobPaused(Event):
    """The worker saved a checkpoint at `step` and stopped; a resume continues from the latest one."""

    step: int | None
    checkpoint: str | None
    at: int
    reason: str | None = None


@dataclass(frozen=True)
class JobResumed(Event):
    actor: str
    at: int


@dataclass(frozen=True)
class CancelRequested(Event):
    actor: str
    at: int


@dataclass(frozen=True)
class JobCancelled(Event):
    reason: str
    at: int


@dataclass(frozen=True)
class JobAttemptLost(Event):
    """A running attempt stopped heartbeating (worker killed, OOM, machine lost)."""

    attempt: int
    reason: str
    requeued: bool
    at: int


@dataclass(frozen=True)
class JobFailed(Event):
    error: dict[str, Any]
    at: int


@dataclass(frozen=True)
class JobSucceeded(Event):
    fine_tuned_model: str
    trained_tokens: int
    artifact_path: str
    at: int
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelRegistered(Event):
    id: str
    project: str
    base_model: str
    backend: str
    job_id: str | None
    artifact_path: str | None
    created_at: int
    lineage: dict[str, Any]


# ---- delegated fine-tuning (workers/delegate.py; docs/delegation.md) ------------------------------------
def budget_stream(project: str, month: str) -> str:
    """A project's delegated spending in one calendar month (YYYY-MM, UTC): appends to it are serialized by
    its version, so two jobs created at once cannot both spend the last of a budget."""
    return f"budget-{project}/{month}"


@dataclass(frozen=True)
class CostEstimated(Event):
    """At create time: the training file's tokens and the estimated cost from the operator's price table."""

    tokens: int
    n_epochs: int
    price_per_million_usd: float | None
    estimated_cost_usd: float | None
    at: int


@dataclass(frozen=True)
class BudgetCharged(Event):
    job_id: str
    amount_usd: float  # negative: a credit (the provider's trained tokens cost less than estimated)
    at: int
    project: str | None = None
    correction: bool = False  # at the end: the real cost minus the estimate charged at create time


@dataclass(frozen=True)
class DataRedacted(Event):
    """What was redacted from a file before it left for the provider (counts only; the local copy is unchanged)."""

    file: str
    emails: int
    phones: int
    names: int
    at: int


@dataclass(frozen=True)
class RemoteJobCreated(Event):
    provider: str
    remote_job_id: str
    remote_model: str
    remote_status: str
    remote_files: dict[str, str | None]
    found_existing: bool  # a retry found the job an earlier attempt created (by metadata), and created none
    at: int


@dataclass(frozen=True)
class RemoteJobUpdated(Event):
    """The remote job's status changed (our status follows it until it ends)."""

    remote_status: str
    at: int
    estimated_finish: int | None = None
    trained_tokens: int | None = None


# (type name) -> function(data) -> (new type name, new data). Empty until a shape changes; add an
# entry here instead of rewriting stored events.
UPCASTERS: dict[str, Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]] = {}


def upcast(type_: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    seen = 0
    while type_ in UPCASTERS and seen < 16:
        type_, data = UPCASTERS[type_](data)
        seen += 1
    return type_, data


# ---- knowledge base ----------------------------------------------------------------------------------
def document_stream(document_id: str) -> str:
    return f"document-{document_id}"


def alias_stream(project: str, alias: str) -> str:
    return f"alias-{project}/{alias}"


def project_stream(project: str) -> str:
    return f"project-{project}"


def chat_stream(chat_id: str) -> str:
    return f"chat-{chat_id}"


@dataclass(frozen=True)
class DocumentAdded(Event):
    id: str
    project: str
    title: str
    filename: str | None
    media_type: str
    bytes: int
    sha256: str
    text_sha256: str
    created_at: int


@dataclass(frozen=True)
class ChunksEmbedded(Event):
    """Chunk texts and their vectors (base64 of little-endian float32): replay needs no model."""

    id: str
    model: str
    dims: int
    chunks: list[dict[str, Any]]


@dataclass(frozen=True)
class DocumentIndexed(Event):
    id: str
    n_chunks: int
    at: int


@dataclass(frozen=True)
class DocumentFailed(Event):
    id: str
    error: dict[str, Any]
    at: int


@dataclass(frozen=True)
class DocumentDeleted(Event):
    id: str
    at: int


@dataclass(frozen=True)
class AliasPromoted(Event):
    project: str
    alias: str
    model: str
    previous: str | None
    reason: str
    at: int


@dataclass(frozen=True)
class ProjectSettingsChanged(Event):
    project: str
    settings: dict[str, Any]
    at: int


@dataclass(frozen=True)
class ChatAnswered(Event):
    id: str
    project: str
    model: str
    alias: str | None
    chunk_ids: list[str]
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    created_at: int
    messages: list[dict[str, Any]] | None = None  # only where the project allows storing chat text
    answer: str | None = None
    provider: str | None = None  # answered through a delegated provider
    redactions: dict[str, int] | None = None  # what was redacted from the prompt sent to that provider
    # how it was generated: temperature, top_p, max_tokens, seed, retrieval and top_k (absent before issue 10)
    sampling: dict[str, Any] | None = None
    # on the serving tier: {"queue_ms", "ttft_ms", "replica": its number} (absent before issue 11 and for providers)
    serving: dict[str, Any] | None = None


@dataclass(frozen=True)
class FeedbackGiven(Event):
    id: str
    chat_id: str
    project: str
    rating: int
    comment: str | None
    corrected_answer: str | None
    messages: list[dict[str, Any]] | None
    approved: bool
    actor: str
    at: int


@dataclass(frozen=True)
class FeedbackApproved(Event):
    id: str
    chat_id: str
    actor: str
    at: int


@dataclass(frozen=True)
class FeedbackRejected(Event):
    """A teacher's decision that a suggested correction must not be trained on (a later FeedbackApproved may
    reverse it, as this may reverse an approval; files already built from the feedback stay as they were)."""

    id: str
    chat_id: str
    actor: str
    reason: str | None
    at: int


# ---- model export and deletion (stream model-<id>; written by api/exports.py and workers/export.py) -----
@dataclass(frozen=True)
class ModelExportRequested(Event):
    id: str  # export-<24 hex>
    model: str
    format: str  # safetensors | gguf
    at: int


@dataclass(frozen=True)
class ModelExportStarted(Event):
    """One try of an export by a worker: an export that keeps killing its worker fails after the limit."""

    id: str
    model: str
    attempt: int
    at: int


@dataclass(frozen=True)
class ModelExported(Event):
    id: str
    model: str
    format: str
    path: str  # relative to the data directory: artifacts/<job>/exports/<export id>
    files: list[str]
    at: int


@dataclass(frozen=True)
class ModelExportFailed(Event):
    id: str
    model: str
    error: dict[str, Any]
    at: int


@dataclass(frozen=True)
class ModelDeleted(Event):
    """Gone from lists and chat; a worker then removes its artifacts. Its history stays in the log."""

    id: str
    at: int


@dataclass(frozen=True)
class ModelArtifactsRemoved(Event):
    id: str
    at: int


# ---- evaluations (OpenAI's Evals shapes; written by api/evals.py, workers/evals.py and the dispatcher) ----
def eval_stream(eval_id: str) -> str:
    return f"eval-{eval_id}"


def eval_run_stream(run_id: str) -> str:
    return f"evalrun-{run_id}"


@dataclass(frozen=True)
class EvalCreated(Event):
    id: str  # eval_<24 hex>
    project: str
    name: str
    data_source_config: dict[str, Any]  # as OpenAI answers it, plus the given item_schema
    testing_criteria: list[dict[str, Any]]  # validated and normalized (domain/evals.py)
    metadata: dict[str, str] | None
    created_at: int


@dataclass(frozen=True)
class EvalUpdated(Event):
    id: str
    name: str
    metadata: dict[str, str] | None
    at: int


@dataclass(frozen=True)
class EvalDeleted(Event):
    id: str
    at: int


@dataclass(frozen=True)
class EvalRunCreated(Event):
    """A run to grade: the items (a blob, by hash) and where each sample comes from. `models` holds what every
    model the run calls (the sampled one and the judges of score_model / label_model) resolved to at creation."""

    id: str  # evalrun_<24 hex>
    eval_id: str
    project: str
    name: str
    data_source: dict[str, Any]  # as given (file_content's content left out: it is in the blob)
    items_sha256: str  # JSONL of {"item": ..., "sample"?: ...} in the blobs table
    n_items: int
    model: str | None  # the sampled model's id (completions runs), an alias resolved
    requested_model: str | None
    models: dict[str, dict[str, Any]]  # name -> {id, backend, base_model, artifact_path}
    metadata: dict[str, str] | None
    created_at: int
    trigger: dict[str, Any] | None = None  # auto_evaluate: {"reason", "job_id", "alias"}
    spec_sha256: str | None = None  # items + template + sampling + judges (domain/eval_runs.spec_sha256)


@dataclass(frozen=True)
class EvalRunStarted(Event):
    attempt: int
    worker: str
    at: int


@dataclass(frozen=True)
class EvalItemGraded(Event):
    """One item's sample and every criterion's result (OpenAI's eval.run.output_item). Appended once per item:
    a resumed attempt skips the items already graded."""

    index: int  # datasource_item_id: the item's place in the data source, from 0
    item: dict[str, Any]
    sample: dict[str, Any]
    results: list[dict[str, Any]]
    status: str  # pass | fail | error
    attempt: int
    at: int


@dataclass(frozen=True)
class EvalRunAttemptLost(Event):
    attempt: int
    reason: str
    requeued: bool
    at: int


@dataclass(frozen=True)
class EvalRunCancelRequested(Event):
    actor: str
    at: int


@dataclass(frozen=True)
class EvalRunCompleted(Event):
    result_counts: dict[str, int]  # total, passed, failed, errored
    per_testing_criteria_results: list[dict[str, Any]]  # {testing_criteria, passed, failed}
    per_model_usage: list[dict[str, Any]]
    at: int


@dataclass(frozen=True)
class EvalRunFailed(Event):
    error: dict[str, Any]
    at: int


@dataclass(frozen=True)
class EvalRunCanceled(Event):
    reason: str
    at: int


@dataclass(frozen=True)
class PromotionEvaluated(Event):
    """auto_promote's decision on a candidate (stream alias-<project>-<alias>'s neighbour: the run's stream)."""

    model: str
    alias: str
    promoted: bool
    reason: str
    at: int
