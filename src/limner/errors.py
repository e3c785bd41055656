"""The one error tree of limner.

Every failure a user can see is one of these, mapped once at each boundary: providers map
their HTTP error shapes here (see ``limner.http.raise_for_provider``), the CLI turns them
into exit codes and the server into JSON error bodies.

    LimnerError
    ├── UserError                      bad input; CLI exit code 2, HTTP 400
    │   ├── InvalidRequestError        a parameter the model cannot take (``param`` names it)
    │   ├── UnknownModelError          no such model (``suggestions`` holds close names)
    │   ├── UnsupportedOperationError  the model cannot do this operation
    │   ├── RetiredModelError          the model was retired and no base URL override is set
    │   ├── MissingKeyError            no API key for the provider
    │   ├── InputImageError            an unreadable, non-image, oversized or mismatched input
    │   ├── ProviderRejectedError      the provider refused the request as invalid (its message)
    │   └── ResumeUnsupportedError     a submitted job cannot be resumed (HTTP 409)
    ├── PolicyError                    refused before sending; exit 1, HTTP 403
    │   ├── BudgetExceededError        a spending cap would be exceeded
    │   └── UsagePolicyError           a licence or content rule forbids the request
    └── ProviderError                  the provider failed; exit 1, HTTP 502
        ├── AuthenticationError        the key was refused (401/403)
        ├── InsufficientCreditsError   the account has no credit left (402)
        ├── RateLimitError             still throttled after the retries (429)
        ├── ContentPolicyError         the provider's safety system refused
        ├── ProviderUnavailableError   5xx or connection failure after the retries
        ├── ProviderTimeoutError       no result before the deadline
        └── JobFailedError             an async job ended failed or cancelled
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "BudgetExceededError",
    "ContentPolicyError",
    "InputImageError",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "JobFailedError",
    "LimnerError",
    "MissingKeyError",
    "PolicyError",
    "ProviderError",
    "ProviderRejectedError",
    "ProviderTimeoutError",
    "ProviderUnavailableError",
    "RateLimitError",
    "ResumeUnsupportedError",
    "RetiredModelError",
    "UnknownModelError",
    "UnsupportedOperationError",
    "UsagePolicyError",
    "UserError",
]


class LimnerError(Exception):
    """Base of every limner error. ``code`` is a stable machine-readable name."""

    exit_code = 1
    http_status = 500
    code = "limner_error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": type(self).__name__,
            "code": self.code,
            "message": str(self),
        }
        return data


class UserError(LimnerError):
    exit_code = 2
    http_status = 400
    code = "invalid_request"


class InvalidRequestError(UserError):
    def __init__(self, message: str, *, param: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.param = param

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "param": self.param}


class UnknownModelError(UserError):
    code = "unknown_model"
    http_status = 404

    def __init__(self, name: str, suggestions: list[str] | None = None):
        self.name = name
        self.suggestions = suggestions or []
        hint = (
            f"Did you mean: {', '.join(self.suggestions)}?"
            if self.suggestions
            else "Run `limner models` to list the models."
        )
        super().__init__(f"Unknown model {name!r}.", hint=hint)


class UnsupportedOperationError(UserError):
    code = "unsupported_operation"


class RetiredModelError(UserError):
    code = "model_retired"


class MissingKeyError(UserError):
    code = "missing_api_key"
    http_status = 401


class InputImageError(UserError):
    code = "invalid_image"


class ProviderRejectedError(UserError):
    """The provider answered that the request is invalid; ``message`` is the provider's own."""

    code = "provider_rejected"

    def __init__(self, message: str, *, status: int | None = None, provider: str | None = None):
        super().__init__(message)
        self.status = status
        self.provider = provider


class ResumeUnsupportedError(UserError):
    """A run was asked to follow an earlier submission that cannot be followed again: the
    provider answers synchronously, or the request was split into several calls."""

    code = "resume_unsupported"
    http_status = 409


class PolicyError(LimnerError):
    http_status = 403
    code = "policy_refused"


class BudgetExceededError(PolicyError):
    code = "budget_exceeded"
    http_status = 402


class UsagePolicyError(PolicyError):
    code = "usage_policy"


class ProviderError(LimnerError):
    http_status = 502
    code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        hint: str | None = None,
    ):
        super().__init__(message, hint=hint)
        self.provider = provider
        self.status = status
        self.request_id = request_id


class AuthenticationError(ProviderError):
    code = "authentication_failed"
    http_status = 401


class InsufficientCreditsError(ProviderError):
    code = "insufficient_credits"
    http_status = 402


class RateLimitError(ProviderError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ContentPolicyError(ProviderError):
    code = "content_policy"
    http_status = 400


class ProviderUnavailableError(ProviderError):
    code = "provider_unavailable"
    http_status = 503


class ProviderTimeoutError(ProviderError):
    code = "timeout"
    http_status = 504


class JobFailedError(ProviderError):
    code = "job_failed"
