"""Tables for batches, A/B runs and grids: one row per batch and one per item.

An item is keyed by its request hash and the occurrence of that hash in the batch (a file that
asks for the same unseeded prompt twice wants two images). Its life: ``pending`` -> ``running``
(claimed before the provider call; ``sent_at`` set as its first request leaves) -> ``done`` (set in the transaction that records the
generation) or ``failed`` (with the reason). ``uncertain`` marks a claim that a crash left open
when the batch is run with ``--uncertain park``. ``provider_handle`` is what an asynchronous
provider named the item's job when it accepted it: after a crash the job is followed again from
it (resumed) instead of being submitted a second time.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from limner.store import db

__all__ = ["batch_items", "batches"]

batches = sa.Table(
    "batches",
    db.metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False, default="batch"),  # batch | ab | grid
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("source", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("options", sa.JSON, nullable=False, default=dict),
    sa.Column("winner_generation_id", sa.String(32)),
)

batch_items = sa.Table(
    "batch_items",
    db.metadata,
    sa.Column(
        "batch_id", sa.String(64), sa.ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("item_key", sa.String(80), primary_key=True),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("line", sa.Integer),
    sa.Column("request_hash", sa.String(64), nullable=False, index=True),
    sa.Column("operation", sa.String(32), nullable=False, default="generate"),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("labels", sa.JSON),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("run_id", sa.String(32)),
    sa.Column("claimed_at", sa.Float),
    sa.Column("sent_at", sa.Float),  # the first request left for the provider
    sa.Column("generation_id", sa.String(32), index=True),
    sa.Column("error_type", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("cost_usd", sa.Float),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("provider_handle", sa.Text),  # the provider's job, to resume after a crash
)


@db.migration
def m004_batches(conn: Connection) -> None:
    for table in (batches, batch_items):
        table.create(conn, checkfirst=True)


@db.migration
def m006_batch_handles(conn: Connection) -> None:
    db.add_missing_column(conn, batch_items, "provider_handle")
