"""Which weights a ``local:`` model name means, and whether they are safe to load.

A name is a catalog entry (``local:sd-turbo``), a model registered with ``limner models add``
(kept in ``<LIMNER_HOME>/models.toml``), a local diffusers folder, a single-file
``.safetensors`` checkpoint, or a Hugging Face repo id. Weights load from safetensors only:
pickle checkpoints (``.ckpt``, ``.pt``, ``.pth``, ``.bin``, ``.pkl``) can run code when they are
opened, so they are refused here, before anything reads them.

Nothing in this module imports torch or diffusers: it runs while a request is planned.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from limner import errors
from limner.catalog import ModelSpec, Price, SizeRule
from limner.config import atomic_write
from limner.types import Operation

__all__ = [
    "FAMILIES",
    "PICKLE_SUFFIXES",
    "ModelSource",
    "detect_family",
    "refuse_pickle",
    "register_model",
    "registered_specs",
    "source_for",
    "spec_for_reference",
]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
REGISTRY_FILE = "models.toml"


@dataclass(frozen=True)
class Family:
    """What an architecture takes: size granularity, defaults, and the operations we drive."""

    name: str
    multiple_of: int
    default_size: int
    default_steps: int
    default_guidance: float
    negative_prompt: bool
    transformer: bool
    controlnet: bool


FAMILIES: dict[str, Family] = {
    "sd": Family("sd", 8, 512, 25, 7.0, True, False, True),
    "sdxl": Family("sdxl", 8, 1024, 30, 6.0, True, False, True),
    "sd3": Family("sd3", 16, 1024, 28, 5.0, True, True, True),
    "flux": Family("flux", 16, 1024, 28, 3.5, False, True, True),
    "flux2": Family("flux2", 16, 1024, 28, 4.0, False, True, False),
}
# diffusers pipeline class names (model_index.json ``_class_name``) -> family.
CLASS_FAMILIES = (
    ("StableDiffusionXL", "sdxl"),
    ("StableDiffusion3", "sd3"),
    ("Flux2", "flux2"),
    ("Flux", "flux"),
    ("StableDiffusion", "sd"),
    ("LatentConsistency", "sd"),
)


@dataclass(frozen=True)
class ModelSource:
    """Where the weights of one model are: a hub repo, a diffusers folder or a single file."""

    kind: str  # "hub" | "folder" | "single_file"
    location: str
    family: str
    revision: str | None = None
    config: str | None = None  # a diffusers folder or repo giving a single file's configuration

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.location}@{self.revision or 'main'}"


def refuse_pickle(location: str | Path) -> None:
    """Raise when ``location`` names a pickle checkpoint, or a folder whose weights are pickles."""
    path = Path(location).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise errors.InvalidRequestError(
            f"{path.name} is a pickle checkpoint ({path.suffix}); limner does not open these, "
            "because unpickling a file can run any code it contains.",
            param="model",
            hint="Use a .safetensors version of the model (most are published as one), or convert "
            "it in a sandbox you trust.",
        )
    if path.is_dir():
        # diffusers is told to load safetensors only; a component folder with nothing but
        # pickle weights would fail later with a vaguer message, so say it now.
        for item in sorted(path.rglob("*")):
            if item.suffix.lower() not in PICKLE_SUFFIXES or not item.is_file():
                continue
            if not any(item.parent.glob("*.safetensors")):
                raise errors.InvalidRequestError(
                    f"{path} holds pickle weights ({item.relative_to(path)}) without a safetensors "
                    "copy; limner loads safetensors only, because unpickling can run code.",
                    param="model",
                    hint="Save the model with safe_serialization=True, or download its "
                    "safetensors files.",
                )


def _safetensors_keys(path: Path) -> list[str]:
    """The tensor names in a .safetensors header (read as JSON; no tensor is loaded)."""
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > 100 * 2**20:
            raise errors.InvalidRequestError(
                f"{path.name} is not a valid safetensors file.", param="model"
            )
        header = json.loads(fh.read(length))
    return [k for k in header if k != "__metadata__"]


def detect_family(path: Path) -> str:
    """The architecture family of a diffusers folder or single-file checkpoint."""
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise errors.InvalidRequestError(
                f"{path} is not a diffusers model folder (it has no model_index.json).",
                param="model",
                hint="Point at a folder saved with save_pretrained, or at a .safetensors file.",
            )
        class_name = str(json.loads(index.read_text()).get("_class_name", ""))
        for prefix, family in CLASS_FAMILIES:
            if class_name.startswith(prefix):
                return family
        raise errors.InvalidRequestError(
            f"{path} holds a {class_name or 'unknown'} pipeline, which the local engine does not drive.",
            param="model",
            hint=f"Supported families: {', '.join(FAMILIES)}.",
        )
    keys = _safetensors_keys(path)
    joined = "\n".join(keys[:5000])
    if "conditioner.embedders.1" in joined:
        return "sdxl"
    if "joint_blocks" in joined:
        return "sd3"
    if "double_blocks" in joined or "single_transformer_blocks" in joined:
        return "flux"
    if "model.diffusion_model.input_blocks" in joined:
        return "sd"
    raise errors.InvalidRequestError(
        f"limner cannot tell which architecture {path.name} is.",
        param="model",
        hint="Register it with `limner models add NAME PATH --family sd|sdxl|sd3|flux`.",
    )


def _guess_hub_family(repo: str) -> str:
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo, "model_index.json")
        if isinstance(cached, str):
            return detect_family(Path(cached).parent)
    except ImportError:
        pass
    lowered = repo.lower()
    for needle, family in (
        ("flux.2", "flux2"),
        ("flux", "flux"),
        ("3.5", "sd3"),
        ("stable-diffusion-3", "sd3"),
        ("xl", "sdxl"),
    ):
        if needle in lowered:
            return family
    return "sd"


def source_for(spec: ModelSpec) -> ModelSource:
    """The weights a catalog, registered or ad-hoc spec stands for."""
    wire = spec.wire
    family = str(wire.get("family", "sd"))
    if "path" in wire:
        path = Path(str(wire["path"])).expanduser()
        refuse_pickle(path)
        if not path.exists():
            raise errors.InvalidRequestError(f"{path} does not exist.", param="model")
        kind = "folder" if path.is_dir() else "single_file"
        return ModelSource(
            kind, str(path.resolve()), family, _folder_revision(path), wire.get("config")
        )
    repo = str(wire.get("repo", ""))
    if not repo:
        raise errors.InvalidRequestError(
            f"{spec.ref} names no weights (wire.repo or wire.path).", param="model"
        )
    return ModelSource("hub", repo, family, wire.get("revision"), wire.get("config"))


def _folder_revision(path: Path) -> str:
    """A short fingerprint of the weight files (names, sizes, mtimes): changes when they do."""
    digest = hashlib.sha256()
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for item in files:
        if item.is_file() and item.suffix in (".safetensors", ".json"):
            stat = item.stat()
            digest.update(
                f"{item.relative_to(path) if path.is_dir() else item.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()
            )
    return "local-" + digest.hexdigest()[:12]


def _spec(model_id: str, family: str, wire: dict[str, Any], description: str) -> ModelSpec:
    fam = FAMILIES[family]
    ops = [Operation.GENERATE, Operation.EDIT, Operation.INPAINT, Operation.OUTPAINT,
           Operation.VARIATION, Operation.LORA]  # fmt: skip
    if fam.controlnet:
        ops.append(Operation.CONTROLNET)
    if family == "flux2":  # diffusers has text-to-image only for FLUX.2
        ops = [Operation.GENERATE, Operation.LORA]
    return ModelSpec(
        id=model_id, provider="local", name=model_id, family=family, description=description,
        operations=ops, size_rule=SizeRule(multiple_of=fam.multiple_of, min_edge=32, max_edge=4096),
        max_n=8, max_input_images=4, negative_prompt=fam.negative_prompt, seed=True, steps=True, guidance=True,
        mask_convention="white", licence="see the model card", self_hostable=True,
        price=Price(kind="free"), wire={"family": family, **wire},
        traits={"controlnet": "yes" if fam.controlnet else "no", "self_hosting": "yes"},
    )  # fmt: skip


def spec_for_reference(model_id: str) -> ModelSpec | None:
    """A spec for a path or hub repo id given directly as ``local:<model_id>``; None if neither."""
    path = Path(model_id).expanduser()
    looks_like_path = model_id.startswith((".", "/", "~")) or path.suffix.lower() in (
        *PICKLE_SUFFIXES,
        ".safetensors",
    )
    if looks_like_path or path.exists():
        refuse_pickle(path)
        if not path.exists():
            raise errors.InvalidRequestError(f"Model path {path} does not exist.", param="model")
        return _spec(
            model_id, detect_family(path), {"path": str(path.resolve())}, f"Local model at {path}"
        )
    if HUB_ID.match(model_id):
        return _spec(
            model_id,
            _guess_hub_family(model_id),
            {"repo": model_id},
            f"Hugging Face model {model_id}",
        )
    return None


# -- models registered with `limner models add` ------------------------------------------------
def _registry(home: Path) -> dict[str, dict[str, Any]]:
    file = home / REGISTRY_FILE
    if not file.is_file():
        return {}
    try:
        return dict(tomllib.loads(file.read_text(encoding="utf-8")).get("models", {}))
    except tomllib.TOMLDecodeError as exc:
        raise errors.UserError(
            f"{file} is not valid TOML: {exc}.", hint="Fix or delete the file."
        ) from exc


def registered_specs(home: Path) -> list[ModelSpec]:
    """Specs of the models registered in ``<home>/models.toml`` (none when it is missing)."""
    specs = []
    for name, entry in _registry(home).items():
        wire: dict[str, Any] = {
            k: entry[k] for k in ("path", "repo", "revision", "config") if k in entry
        }
        family = str(entry.get("family", "sd"))
        if family not in FAMILIES:
            continue
        specs.append(
            _spec(name, family, wire, str(entry.get("description", f"Registered model {name}")))
        )
    return specs


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # JSON strings are valid TOML basic strings


def register_model(
    home: Path,
    name: str,
    path_or_id: str,
    *,
    family: str | None = None,
    revision: str | None = None,
) -> ModelSpec:
    """Check and record ``name`` -> weights in ``<home>/models.toml``; return its spec."""
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
        raise errors.InvalidRequestError(
            f"Model name {name!r} is not allowed.", param="name",
            hint="Use letters, digits, '.', '_' and '-'.",
        )  # fmt: skip
    if family is not None and family not in FAMILIES:
        raise errors.InvalidRequestError(
            f"Unknown family {family!r}.",
            param="family",
            hint=f"Choose one of {', '.join(FAMILIES)}.",
        )
    entry: dict[str, Any]
    path = Path(path_or_id).expanduser()
    if path.exists() or path.suffix.lower() in (*PICKLE_SUFFIXES, ".safetensors"):
        refuse_pickle(path)
        if not path.exists():
            raise errors.InvalidRequestError(f"{path} does not exist.", param="path")
        entry = {"path": str(path.resolve()), "family": family or detect_family(path)}
    elif HUB_ID.match(path_or_id):
        entry = {"repo": path_or_id, "family": family or _guess_hub_family(path_or_id)}
    else:
        raise errors.InvalidRequestError(
            f"{path_or_id!r} is neither an existing path nor a Hugging Face repo id (owner/name).",
            param="path",
        )
    if revision:
        entry["revision"] = revision
    models = _registry(home)
    models[name] = entry
    lines = ["# Models registered with `limner models add`.", ""]
    for key, value in sorted(models.items()):
        lines.append(f"[models.{_toml_value(key)}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in value.items())
        lines.append("")
    atomic_write(home / REGISTRY_FILE, "\n".join(lines).encode())
    return registered_specs(home)[[s.id for s in registered_specs(home)].index(name)]
