"""Cost from catalog prices: estimates before a call, actuals after it.

Order of trust for actuals: a cost the provider reports, then token usage at the model's token
rates, then the catalog's list price per image.
"""

from __future__ import annotations

from limner.catalog import ModelSpec
from limner.types import ImageRequest, Operation, Usage

__all__ = ["actual_cost", "estimate_cost"]


def estimate_cost(
    spec: ModelSpec, request: ImageRequest, n: int | None = None, op: Operation | None = None
) -> float | None:
    """The list price of ``n`` images (default ``request.n``) made by ``op`` (generation when
    not given); None when the catalog has none."""
    count = n if n is not None else request.n
    apart = _priced_apart(spec, request, op)
    if apart is not None:
        return round(apart * count, 6)
    price = spec.price
    if price is None:
        return None
    if price.kind == "free":
        return 0.0
    if price.kind == "subscription":
        return None
    each = price.image_price(request.quality, request.size)
    if each is None:
        return None
    return round(each * count, 6)


def _priced_apart(spec: ModelSpec, request: ImageRequest, op: Operation | None) -> float | None:
    """The price of one image from an endpoint the catalog prices apart from the model."""
    for key, prices in spec.option_prices.items():
        chosen = request.provider_options.get(key)
        if chosen is not None and str(chosen) in prices:
            return prices[str(chosen)]
    return spec.operation_prices.get(op.value) if op is not None else None


def token_cost(spec: ModelSpec, usage: Usage) -> float | None:
    price = spec.price
    if price is None or price.kind != "per_token" or usage.output_tokens is None:
        return None
    text_in = usage.input_text_tokens
    image_in = usage.input_image_tokens or 0
    if text_in is None:
        text_in = max((usage.input_tokens or 0) - image_in, 0)
    out = (
        usage.output_image_tokens if usage.output_image_tokens is not None else usage.output_tokens
    )
    total = (
        text_in * (price.text_input_per_mtok or 0)
        + image_in * (price.image_input_per_mtok or price.text_input_per_mtok or 0)
        + (out or 0) * (price.image_output_per_mtok or 0)
    ) / 1_000_000
    return round(total, 6)


def actual_cost(
    spec: ModelSpec,
    request: ImageRequest,
    usage: Usage,
    images: int,
    reported: float | None = None,
    op: Operation | None = None,
) -> float | None:
    if reported is not None:
        return round(reported, 6)
    by_tokens = token_cost(spec, usage)
    if by_tokens is not None:
        return by_tokens
    return estimate_cost(spec, request, images, op)
