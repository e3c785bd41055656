"""Provenance: the IPTC digital source type in XMP, limner's own metadata, and C2PA manifests.

Generated images carry ``Iptc4xmpExt:DigitalSourceType = trainedAlgorithmicMedia`` (written by
:mod:`limner.metadata`). :func:`sign_c2pa` adds a signed C2PA manifest (c2pa-python) that names
limner, the model and the provider; :func:`read_provenance` reads all three back and verifies
the manifest's signature and its hash of the pixels.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

from limner import errors
from limner.metadata import IPTC_TRAINED, read_metadata

__all__ = ["Provenance", "read_provenance", "sign_c2pa", "sign_from_env", "strip_metadata"]

C2PA_FORMATS = {"image/png", "image/jpeg", "image/webp"}
GENERATION_LABEL = "org.limner.generation"
# A signature chaining to a root outside the trust list still proves integrity; only these
# codes (about trust, not tampering) leave a manifest "valid".
TRUST_ONLY_CODES = {
    "signingCredential.untrusted",
    "signingCredential.ocsp.skipped",
    "timeStamp.untrusted",
}


@dataclass
class Provenance:
    media_type: str
    digital_source_type: str | None = None
    ai_generated: bool = False
    limner: dict[str, Any] = field(default_factory=dict)
    c2pa: dict[str, Any] | None = None

    @property
    def c2pa_valid(self) -> bool | None:
        return None if self.c2pa is None else bool(self.c2pa.get("valid"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "media_type": self.media_type, "digital_source_type": self.digital_source_type,
            "ai_generated": self.ai_generated, "limner": self.limner, "c2pa": self.c2pa,
        }  # fmt: skip


def _media_type(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:2] == b"\xff\xd8":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise errors.InputImageError("Provenance can be read from PNG, JPEG and WebP images only.")


def _xmp_text(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=["PNG", "JPEG", "WEBP"]) as img:
        xmp = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp") or ""
    return xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else str(xmp)


def _source_type(xmp: str) -> str | None:
    match = re.search(r'DigitalSourceType(?:="|>)([^"<]+)', xmp)
    return match.group(1).strip() if match else None


def _c2pa_available() -> bool:
    try:
        import c2pa  # noqa: F401
    except ImportError:
        return False
    return True


def _read_c2pa(data: bytes, media_type: str) -> dict[str, Any] | None:
    if not _c2pa_available():
        return None
    import c2pa

    try:
        reader = c2pa.Reader(media_type, io.BytesIO(data))
    except c2pa.C2paError as exc:
        if "ManifestNotFound" in type(exc).__name__ or "not found" in str(exc).lower():
            return None
        return {"valid": False, "error": str(exc)}
    with reader:
        store = json.loads(reader.json())
    manifest = store.get("manifests", {}).get(store.get("active_manifest"), {})
    statuses = [s.get("code", "") for s in store.get("validation_status") or []]
    problems = [code for code in statuses if code not in TRUST_ONLY_CODES]
    assertions = {a.get("label"): a.get("data") for a in manifest.get("assertions", [])}
    return {
        "valid": not problems,
        "trusted": not statuses,
        "problems": problems,
        "status": statuses,
        "claim_generator": manifest.get("claim_generator_info") or manifest.get("claim_generator"),
        "signature": manifest.get("signature_info"),
        "generation": assertions.get(GENERATION_LABEL),
        "actions": assertions.get("c2pa.actions.v2") or assertions.get("c2pa.actions"),
    }


def read_provenance(data: bytes) -> Provenance:
    """Everything an image says about where it came from; verifies a C2PA manifest if present."""
    media_type = _media_type(data)
    source = _source_type(_xmp_text(data))
    try:
        meta = read_metadata(data)
    except (ValueError, OSError):
        meta = {}
    info = Provenance(media_type=media_type, digital_source_type=source, limner=meta)
    info.c2pa = _read_c2pa(data, media_type)
    info.ai_generated = source == IPTC_TRAINED or bool(
        info.c2pa and IPTC_TRAINED in json.dumps(info.c2pa.get("actions") or {})
    )
    return info


def sign_c2pa(
    data: bytes,
    *,
    cert_chain_pem: bytes,
    private_key_pem: bytes,
    model: str | None = None,
    provider: str | None = None,
    algorithm: str = "es256",
    title: str = "image",
    timestamp_url: str | None = None,
) -> bytes:
    """``data`` with a signed C2PA manifest: created by limner, trained algorithmic media."""
    try:
        import c2pa
    except ImportError as exc:
        raise errors.UserError(
            "Signing C2PA manifests needs c2pa-python.", hint="pip install c2pa-python"
        ) from exc
    from limner import __version__ as version

    media_type = _media_type(data)
    action = {
        "action": "c2pa.created",
        "digitalSourceType": IPTC_TRAINED,
        "softwareAgent": {"name": "limner", "version": version},
    }
    manifest = {
        "claim_generator_info": [{"name": "limner", "version": version}],
        "title": title,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [action]}},
            {
                "label": GENERATION_LABEL,
                "data": {"model": model, "provider": provider, "generator": "limner"},
            },
        ],
    }
    try:
        alg = c2pa.C2paSigningAlg[algorithm.upper()]
    except KeyError as exc:
        raise errors.InvalidRequestError(
            f"Unknown signing algorithm {algorithm!r}.", param="algorithm"
        ) from exc
    out = io.BytesIO()
    try:
        signer = c2pa.Signer.from_info(
            c2pa.C2paSignerInfo(alg, cert_chain_pem, private_key_pem, timestamp_url)
        )
        with c2pa.Builder(manifest) as builder:
            builder.sign(signer, media_type, io.BytesIO(data), out)
    except c2pa.C2paError as exc:
        raise errors.UserError(
            f"C2PA signing failed: {exc}.",
            hint="The certificate must be an end-entity signing certificate (not a CA) with its chain, matching the key.",
        ) from exc
    return out.getvalue()


def sign_from_env(data: bytes, *, model: str | None, provider: str | None) -> bytes:
    """Sign ``data`` when LIMNER_C2PA_CERT and LIMNER_C2PA_KEY name PEM files; else return it.

    The hook for signing every generated image: set the two variables (and LIMNER_C2PA_ALG if the
    key is not ES256) and each stored image carries a manifest naming the model and provider.
    """
    import os
    from pathlib import Path

    cert, key = os.environ.get("LIMNER_C2PA_CERT"), os.environ.get("LIMNER_C2PA_KEY")
    if not cert or not key:
        return data
    try:
        chain, private = Path(cert).read_bytes(), Path(key).read_bytes()
    except OSError as exc:
        raise errors.UserError(
            f"Cannot read the C2PA signing files: {exc}.",
            hint="Check LIMNER_C2PA_CERT and LIMNER_C2PA_KEY.",
        ) from exc
    return sign_c2pa(
        data, cert_chain_pem=chain, private_key_pem=private, model=model, provider=provider,
        algorithm=os.environ.get("LIMNER_C2PA_ALG", "es256"),
    )  # fmt: skip


def strip_metadata(data: bytes) -> bytes:
    """Every metadata block removed (pixels untouched), for users who must publish without it."""
    from limner.images import open_checked
    from limner.metadata import strip

    media_type = _media_type(data)
    open_checked(data, name="image")  # the pixel cap and allowlist before anything is decoded
    return strip(data, media_type)
