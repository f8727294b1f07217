from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb

from eventlog.store import RecordedEvent


class WebhooksProjection:
    """Each project's webhooks and how their deliveries stand (eventlog/webhooks.py keeps the cursor itself, read
    back from each webhook's stream: this table is for listing, never for deciding what to deliver)."""

    name = "webhooks"
    types = frozenset({"WebhookCreated", "WebhookDisabled", "WebhookDeleted", "WebhookDelivered",
                       "WebhookDeliveryFailed"})
    tables = ("webhooks",)

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            d = e.data
            if e.type == "WebhookCreated":
                conn.execute(
                    "INSERT INTO webhooks (id, project, url, event_types, created_at, created_position, seq) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                    (d["id"], d["project"], d["url"], Jsonb(d["event_types"]), d["created_at"], e.global_position,
                     e.global_position))
            elif e.type == "WebhookDisabled":
                conn.execute("UPDATE webhooks SET deleted_at = coalesce(deleted_at, %s), last_error = %s WHERE id = %s",
                             (d["at"], f"disabled: {d['reason']}"[:500], d["id"]))
            elif e.type == "WebhookDeleted":
                conn.execute("UPDATE webhooks SET deleted_at = coalesce(deleted_at, %s) WHERE id = %s",
                             (d["at"], d["id"]))
            elif e.type == "WebhookDelivered":
                conn.execute("UPDATE webhooks SET delivered_position = greatest(coalesce(delivered_position, 0), %s), "
                             "delivered = delivered + 1, failed_attempts = 0, last_error = NULL WHERE id = %s",
                             (d["position"], d["webhook_id"]))
            elif e.type == "WebhookDeliveryFailed":
                conn.execute("UPDATE webhooks SET failed_attempts = %s, last_error = %s WHERE id = %s",
                             (d["attempt"], f"{d.get('status') or ''} {d.get('error') or ''}".strip()[:500],
                              d["webhook_id"]))
