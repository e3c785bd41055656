"""The guards every client runs before sending a request: budgets and usage policy.

A guard implements ``limner.client.Guard``: ``before_send(plan)`` refuses (raising a
``PolicyError``) or returns a token, then ``settle(plan, token, cost)`` or ``release(plan, token)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from limner.client import Limner

__all__ = ["default_guards"]


def default_guards(client: Limner) -> list[Any]:
    """The guards a client gets when none are passed: those its configuration asks for."""
    return []
