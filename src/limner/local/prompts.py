"""Long prompts and ``(word:1.2)`` weighting.

CLIP reads 77 tokens at a time. For SD 1.5 and SDXL, prompts longer than that, or with weights,
are encoded with compel: the prompt is split into 75-token chunks that are encoded separately
and concatenated, and weighted words have their embeddings scaled. The A1111 syntax
``(word:1.2)`` is translated to compel's ``(word)1.2``; compel's own syntax (``word+``,
``(words)0.8``, ``.blend()``) passes through. SD3 and FLUX read long prompts with their T5
encoder (up to ``max_sequence_length`` tokens); weights are removed there, with a note.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["encode_prompts", "has_weighting", "to_compel_syntax"]

A1111_WEIGHT = re.compile(r"\(([^():]+):\s*([0-9]*\.?[0-9]+)\)")
COMPEL_MARKS = re.compile(r"\)[0-9.]+|\w[+-]+(\s|$)|\.blend\(|\.and\(")


def has_weighting(text: str) -> bool:
    return bool(A1111_WEIGHT.search(text) or COMPEL_MARKS.search(text))


def to_compel_syntax(text: str) -> str:
    return A1111_WEIGHT.sub(lambda m: f"({m.group(1).strip()}){m.group(2)}", text)


def strip_weighting(text: str) -> str:
    return A1111_WEIGHT.sub(lambda m: m.group(1).strip(), text)


def _token_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, truncation=False).input_ids)


def encode_prompts(
    pipe: Any, family: str, prompt: str, negative: str | None, notes: list[str]
) -> dict[str, Any]:
    """Pipeline keyword arguments for the prompt: plain text, or compel embeddings when the
    prompt is weighted or longer than the CLIP window."""
    negative = negative or ""
    if family not in ("sd", "sdxl"):
        if has_weighting(prompt) or has_weighting(negative):
            notes.append(
                f"prompt weights are not applied to {family} models; the words were kept unweighted."
            )
            prompt, negative = strip_weighting(prompt), strip_weighting(negative)
        kwargs: dict[str, Any] = {"prompt": prompt}
        if negative and "negative_prompt" in _call_parameters(pipe):
            kwargs["negative_prompt"] = negative
        return kwargs
    tokenizer = pipe.tokenizer
    window = tokenizer.model_max_length
    long = max(_token_count(tokenizer, prompt), _token_count(tokenizer, negative)) > window
    if not (long or has_weighting(prompt) or has_weighting(negative)):
        return {"prompt": prompt, "negative_prompt": negative or None}
    try:
        from compel import Compel, ReturnedEmbeddingsType
    except ImportError:
        notes.append(
            "compel is not installed: the prompt was cut at the CLIP window and weights were ignored."
        )
        return {
            "prompt": strip_weighting(prompt),
            "negative_prompt": strip_weighting(negative) or None,
        }
    if long:
        notes.append(f"the prompt is longer than {window} tokens: it was encoded in chunks.")
    if family == "sdxl":
        compel = Compel(
            tokenizer=[pipe.tokenizer, pipe.tokenizer_2], text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
            returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
            requires_pooled=[False, True], truncate_long_prompts=False, device=str(pipe._execution_device),
        )  # fmt: skip
        (pos, pos_pooled), (neg, neg_pooled) = (
            compel(to_compel_syntax(prompt)),
            compel(to_compel_syntax(negative)),
        )
        pos, neg = _same_length(compel, pos, neg)
        return {"prompt_embeds": pos, "pooled_prompt_embeds": pos_pooled,
                "negative_prompt_embeds": neg, "negative_pooled_prompt_embeds": neg_pooled}  # fmt: skip
    compel = Compel(tokenizer=tokenizer, text_encoder=pipe.text_encoder, truncate_long_prompts=False,
                    device=str(pipe._execution_device))  # fmt: skip
    pos, neg = compel(to_compel_syntax(prompt)), compel(to_compel_syntax(negative))
    pos, neg = _same_length(compel, pos, neg)
    return {"prompt_embeds": pos, "negative_prompt_embeds": neg}


def _same_length(compel: Any, pos: Any, neg: Any) -> tuple[Any, Any]:
    """Pad the shorter embedding with empty-prompt chunks so both have as many tokens (CFG
    batches them together)."""
    import torch

    target = max(pos.shape[1], neg.shape[1])
    if pos.shape[1] == neg.shape[1]:
        return pos, neg
    empty = compel("")
    empty = empty[0] if isinstance(empty, tuple) else empty

    def grow(embeds: Any) -> Any:
        while embeds.shape[1] < target:
            embeds = torch.cat([embeds, empty[:, : target - embeds.shape[1]]], dim=1)
        return embeds

    return grow(pos), grow(neg)


def _call_parameters(pipe: Any) -> set[str]:
    import inspect

    return set(inspect.signature(type(pipe).__call__).parameters)
