"""Google Gemini image models (``generateContent`` with the IMAGE response modality).

Edits and reference images travel as ``inlineData`` parts next to the prompt; there is no
mask and no ``n`` (one image per call; core splits larger n into parallel calls). Safety
refusals come back as a 200 with a blocked candidate or ``promptFeedback.blockReason``.
The retired Imagen models keep their ``:predict`` wire format for compatible servers.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from limner import codec, errors
from limner.catalog import ModelSpec
from limner.config import KeyStore
from limner.flows import Flow, ProviderOutput, Send
from limner.http import build_request, map_http_error
from limner.providers.base import Provider, b64_image
from limner.types import ImageInput, ImageRequest, Operation, Usage

__all__ = ["SAFETY_FINISH_REASONS", "GeminiProvider"]

# finishReason values that mean the safety system withheld the image.
SAFETY_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
    }
)
# generationConfig keys a caller may pass through provider_options.
PASSTHROUGH_OPTIONS = {
    "temperature",
    "topP",
    "topK",
    "candidateCount",
    "thinkingConfig",
    "responseModalities",
}
TOP_LEVEL_OPTIONS = {"safetySettings", "tools", "systemInstruction"}


def _inline(image: ImageInput) -> dict[str, Any]:
    return {"inlineData": {"mimeType": image.media_type, "data": codec.b64encode(image.data)}}


class GeminiProvider(Provider):
    name = "gemini"
    display_name = "Google Gemini"
    key_env = "GEMINI_API_KEY"
    extra_key_envs = ("GOOGLE_API_KEY",)
    default_base_url = "https://generativelanguage.googleapis.com/v1beta"

    @classmethod
    def resolve_key(cls, explicit: str | None = None, keys: KeyStore | None = None) -> str | None:
        """As the base, then GOOGLE_API_KEY, which Google's own SDK also reads."""
        return super().resolve_key(explicit, keys) or os.environ.get("GOOGLE_API_KEY") or None

    def _headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.api_key} if self.api_key else {}

    # -- request building ----------------------------------------------------------------------
    def _generate_content_body(self, request: ImageRequest, spec: ModelSpec) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": request.prompt}]
        parts.extend(_inline(img) for img in request.images)
        for ref in request.references:
            # Gemini reads reference roles from the prompt; label each image so the model can.
            parts.append({"text": f"Reference image ({ref.kind}):"})
            parts.append(_inline(ref.image))
        image_config: dict[str, Any] = {}
        if request.aspect_ratio:
            image_config["aspectRatio"] = request.aspect_ratio
        if request.quality:
            image_config["imageSize"] = request.quality
        config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"]}
        if image_config:
            config["imageConfig"] = image_config
        if request.seed is not None:
            config["seed"] = request.seed
        options = dict(request.provider_options)
        unknown = set(options) - PASSTHROUGH_OPTIONS - TOP_LEVEL_OPTIONS
        if unknown:
            raise errors.InvalidRequestError(
                f"{spec.ref} does not take provider option(s) {', '.join(sorted(unknown))}.",
                param="provider_options",
                hint=f"Allowed: {', '.join(sorted(PASSTHROUGH_OPTIONS | TOP_LEVEL_OPTIONS))}.",
            )
        config.update({k: v for k, v in options.items() if k in PASSTHROUGH_OPTIONS})
        body: dict[str, Any] = {
            "contents": [{"role": "user", "parts": parts}],
            "generationConfig": config,
        }
        body.update({k: v for k, v in options.items() if k in TOP_LEVEL_OPTIONS})
        return body

    def _predict_body(self, request: ImageRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"sampleCount": request.n}
        if request.aspect_ratio:
            params["aspectRatio"] = request.aspect_ratio
        if request.seed is not None:
            params["seed"] = request.seed
        if request.negative_prompt:
            params["negativePrompt"] = request.negative_prompt
        return {"instances": [{"prompt": request.prompt}], "parameters": params}

    def _endpoint(self, spec: ModelSpec) -> tuple[str, str]:
        model = spec.wire.get("model", spec.id)
        method = "predict" if spec.wire.get("api") == "imagen" else "generateContent"
        return model, method

    def native_request(
        self, op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> dict[str, Any]:
        model, method = self._endpoint(spec)
        if method == "predict":
            body = self._predict_body(request)
        else:
            body = self._generate_content_body(request, spec)
            for part in body["contents"][0]["parts"]:
                if "inlineData" in part:
                    part["inlineData"] = {**part["inlineData"], "data": "<base64>"}
        return {"method": "POST", "path": f"/models/{model}:{method}", "json": body}

    # -- the flow ------------------------------------------------------------------------------
    def flow(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> Flow:
        model, method = self._endpoint(spec)
        body = (
            self._predict_body(request)
            if method == "predict"
            else self._generate_content_body(request, spec)
        )
        url = f"{self.base_url}/models/{model}:{method}"
        response: httpx.Response = yield Send(
            build_request("POST", url, json=body, headers=self._headers())
        )
        if response.status_code >= 400:
            raise self._error(response)
        data = codec.json_loads_lifting(response.content, "data", "bytesBase64Encoded")
        if method == "predict":
            return self._parse_predict(data)
        return self._parse_generate_content(data)

    def _parse_generate_content(self, data: dict[str, Any]) -> ProviderOutput:
        request_id = data.get("responseId")
        feedback = data.get("promptFeedback") or {}
        if feedback.get("blockReason"):
            raise errors.ContentPolicyError(
                f"gemini: the prompt was blocked ({feedback['blockReason']}).",
                provider=self.name,
                request_id=request_id,
            )
        images, texts, reasons = [], [], []
        for candidate in data.get("candidates") or []:
            reasons.append(candidate.get("finishReason") or "")
            for part in (candidate.get("content") or {}).get("parts") or []:
                if part.get("thought"):
                    continue  # interim "thinking" images are not results
                inline = part.get("inlineData") or part.get("inline_data")
                if inline and str(inline.get("mimeType", "image/")).startswith("image/"):
                    images.append(b64_image(inline["data"]))
                elif part.get("text"):
                    texts.append(part["text"])
        if not images:
            blocked = [r for r in reasons if r in SAFETY_FINISH_REASONS]
            if blocked:
                raise errors.ContentPolicyError(
                    f"gemini: the image was withheld by the safety system ({blocked[0]}).",
                    provider=self.name,
                    request_id=request_id,
                )
            said = f": {' '.join(texts)[:300]}" if texts else ""
            raise errors.ProviderError(
                f"gemini: the response held no image (finishReason {', '.join(reasons) or 'none'}){said}",
                provider=self.name,
                request_id=request_id,
                hint="Rephrase the prompt to ask for an image explicitly.",
            )
        for image in images:
            image.revised_prompt = " ".join(texts) or None
        return ProviderOutput(
            images=images, usage=_usage(data.get("usageMetadata")), request_id=request_id
        )

    def _parse_predict(self, data: dict[str, Any]) -> ProviderOutput:
        predictions = data.get("predictions") or []
        images = [
            b64_image(p["bytesBase64Encoded"]) for p in predictions if p.get("bytesBase64Encoded")
        ]
        if not images:
            reason = next(
                (p.get("raiFilteredReason") for p in predictions if p.get("raiFilteredReason")),
                None,
            )
            raise errors.ContentPolicyError(
                f"gemini: the image was filtered ({reason or 'no image returned'}).",
                provider=self.name,
            )
        return ProviderOutput(images=images)

    def _error(self, response: httpx.Response) -> errors.LimnerError:
        try:
            err = response.json().get("error") or {}
        except ValueError:
            err = {}
        message = err.get("message") if isinstance(err, dict) else None
        status = err.get("status") if isinstance(err, dict) else None
        if status and message:
            message = f"{message} ({status})"
        return map_http_error(self.name, response, message)


def _modality_counts(details: list[dict[str, Any]] | None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in details or []:
        counts[str(item.get("modality", ""))] = counts.get(str(item.get("modality", "")), 0) + int(
            item.get("tokenCount", 0)
        )
    return counts


def _usage(raw: dict[str, Any] | None) -> Usage:
    """Token usage; image-output tokens are what Google bills images by."""
    if not raw:
        return Usage()
    prompt = _modality_counts(raw.get("promptTokensDetails"))
    out = _modality_counts(raw.get("candidatesTokensDetails"))
    output_tokens = raw.get("candidatesTokenCount")
    return Usage(
        input_tokens=raw.get("promptTokenCount"),
        output_tokens=output_tokens,
        input_text_tokens=prompt.get("TEXT", raw.get("promptTokenCount"))
        if prompt or raw.get("promptTokenCount")
        else None,
        input_image_tokens=prompt.get("IMAGE", 0),
        output_image_tokens=out.get("IMAGE", output_tokens),
        raw=raw,
    )
