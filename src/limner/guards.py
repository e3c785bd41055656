"""The guards every client runs before sending a request: usage policy, then budgets.

A guard implements ``limner.client.Guard``: ``before_send(plan)`` refuses (raising a
``PolicyError``) or returns a token, then ``settle(plan, token, cost)`` or ``release(plan, token)``.
Both guards read their settings at call time, so a change to config.json applies at once;
with nothing configured they cost one read of the config file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from limner.client import Limner

__all__ = ["default_guards"]


def default_guards(client: Limner) -> list[Any]:
    """Policy first (a refused request reserves nothing), then the budget."""
    from limner.budget import BudgetGuard
    from limner.policy import PolicyGuard

    return [PolicyGuard(client), BudgetGuard(client)]
