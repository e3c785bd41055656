"""The budget ledger: reservations of estimated cost, held while a request is in flight.

Spend already made is read from ``generations.cost_usd``; a reservation covers a request that
has not been logged yet. A reservation is ``held`` until it is settled (the generation, with its
actual cost, is in the log) or released (the request failed); a held one past ``expires_at``
belongs to a process that died and no longer counts.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from limner.store import db

__all__ = ["budget_reservations", "m002_budget"]

budget_reservations = sa.Table(
    "budget_reservations",
    db.metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),  # held | settled | released
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("estimated_usd", sa.Float, nullable=False),
    sa.Column("actual_usd", sa.Float),
    sa.Column("tags", sa.JSON),
    sa.Column("settled_at", sa.Float),
)


@db.migration
def m002_budget(conn: Connection) -> None:
    budget_reservations.create(conn, checkfirst=True)
