"""Read models built from the log. Each applies a batch of events inside the caller's transaction;
the runner writes the projection's checkpoint in that same transaction (exactly once)."""
from __future__ import annotations

from eventlog.projections.aliases import AliasesProjection, SettingsProjection
from eventlog.projections.chat import ChatProjection
from eventlog.projections.checkpoints import CheckpointsProjection
from eventlog.projections.documents import DocumentsProjection
from eventlog.projections.evals import EvalsProjection
from eventlog.projections.files import FilesProjection
from eventlog.projections.jobs import JobsProjection
from eventlog.projections.keys import KeysProjection
from eventlog.projections.models import ModelsProjection
from eventlog.projections.streams import StreamProjectsProjection
from eventlog.projections.webhooks import WebhooksProjection


def all_projections() -> list:
    return [FilesProjection(), JobsProjection(), CheckpointsProjection(), KeysProjection(), ModelsProjection(),
            DocumentsProjection(), AliasesProjection(), SettingsProjection(), ChatProjection(),
            StreamProjectsProjection(), WebhooksProjection(), EvalsProjection()]
