"""Tables of the server: the durable job queue, idempotency records and server API keys.

A job moves ``queued -> running -> succeeded | failed | cancelled | uncertain``. While running,
``submit_state`` records how far the provider call got: ``none`` (nothing sent; safe to run
again), ``submitting`` (written *before* the request leaves, so a crash after this point may have
been paid for) and ``submitted`` (the provider answered; ``provider_request_id`` names the call).
After a crash a job whose submission may have reached the provider is reconciled, never blindly
resubmitted: an asynchronous provider's job (``provider_handle`` recorded) is queued again to be
resumed; when the provider offers no lookup it ends ``uncertain`` for a person to decide.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from limner.store import db

__all__ = [
    "idempotency_keys",
    "m003_jobs",
    "m005_key_budgets",
    "server_api_keys",
    "server_jobs",
    "webhook_deliveries",
]

server_jobs = sa.Table(
    "server_jobs",
    db.metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("batch_id", sa.String(32), index=True),
    sa.Column("owner", sa.String(64), nullable=False, index=True),  # the API key id, for fairness
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("operation", sa.String(32), nullable=False),
    sa.Column("provider", sa.String(64), nullable=False, index=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),  # ImageRequest fields; images as asset ids
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_expires", sa.Float, index=True),
    sa.Column("submit_state", sa.String(16), nullable=False, default="none"),
    sa.Column("submit_count", sa.Integer, nullable=False, default=0),
    sa.Column("submitted_at", sa.Float),
    sa.Column("provider_request_id", sa.String(200)),
    sa.Column("generation_id", sa.String(32)),
    sa.Column("result", sa.JSON),
    sa.Column("error", sa.JSON),
    sa.Column("progress", sa.Float),
    sa.Column("progress_message", sa.Text),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_status", sa.String(64)),  # delivered | failed after N attempts
    # What an asynchronous provider named the job when it accepted it: a crash after that is
    # resumed from it (polled again), never submitted twice.
    sa.Column("provider_handle", sa.Text),
)

idempotency_keys = sa.Table(
    "server_idempotency",
    db.metadata,
    sa.Column("scope", sa.String(64), primary_key=True),  # the API key id: keys never collide
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # in_progress | done
    sa.Column("status_code", sa.Integer),
    sa.Column("media_type", sa.String(100)),
    sa.Column("body", sa.LargeBinary),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
)

server_api_keys = sa.Table(
    "server_api_keys",
    db.metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("rate_per_minute", sa.Integer),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    # Spending caps of this key: [{"scope": "daily" | "monthly", "limit_usd": 5.0}] (m005).
    sa.Column("budget", sa.JSON),
)

# One row per webhook a job owes its caller: sent by the delivery loop of any server process,
# retried with backoff until a 2xx answer or the attempts run out, and kept across restarts.
webhook_deliveries = sa.Table(
    "server_webhook_deliveries",
    db.metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # sent as Limner-Delivery
    sa.Column("job_id", sa.String(32), nullable=False),
    # The job's updated_at when it ended: one delivery per end of a job (a retried job ends again).
    sa.Column("job_updated_at", sa.Float, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),  # the exact bytes every attempt sends
    sa.Column("status", sa.String(16), nullable=False, index=True),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False, index=True),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_expires", sa.Float),
    sa.Column("last_error", sa.String(200)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("delivered_at", sa.Float),
    sa.UniqueConstraint("job_id", "job_updated_at", name="uq_webhook_delivery_job_end"),
)


@db.migration
def m003_jobs(conn: Connection) -> None:
    for table in (server_jobs, idempotency_keys, server_api_keys):
        table.create(conn, checkfirst=True)


@db.migration
def m005_key_budgets(conn: Connection) -> None:
    """Per-key spending caps, and durable webhook deliveries."""
    db.add_missing_column(conn, server_api_keys, "budget")
    webhook_deliveries.create(conn, checkfirst=True)


@db.migration
def m007_job_handles(conn: Connection) -> None:
    db.add_missing_column(conn, server_jobs, "provider_handle")
