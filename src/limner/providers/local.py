"""The ``local:`` provider: generation on this machine through diffusers.

The flow checks the request (options, ControlNet inputs, outpainting sides) before any model
loads, submits a job to the process's engine, and relays its per-step progress. On the
client-side deadline it cancels the job, which stops at the next step.
"""

from __future__ import annotations

import io
from typing import Any

from limner import errors
from limner.catalog import ModelSpec
from limner.flows import DeadlineExceeded, Flow, Progress, ProviderOutput, Run
from limner.providers.base import Provider, image_from_bytes
from limner.types import ImageRequest, Operation, Usage

__all__ = ["LocalProvider"]


class LocalProvider(Provider):
    name = "local"
    display_name = "Local (diffusers)"
    needs_key = False
    default_base_url = "local://"

    @classmethod
    def spec_for(cls, model_id: str) -> ModelSpec | None:
        """A spec for ``local:<path or repo id>`` when the name is not in the catalog."""
        from limner.local.models import spec_for_reference

        return spec_for_reference(model_id)

    def model_revision(self, spec: ModelSpec) -> str | None:
        from limner.local.models import source_for

        return source_for(spec).revision

    def native_request(
        self, op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> dict[str, Any]:
        from limner.local.models import source_for
        from limner.local.options import precheck

        opts = precheck(op, spec, request)
        source = source_for(spec)
        return {
            "engine": "diffusers", "operation": op.value, "model": {"kind": source.kind,
            "location": source.location, "family": source.family, "revision": source.revision},
            "prompt": request.prompt, "negative_prompt": request.negative_prompt, "n": request.n,
            "size": request.size, "seed": request.seed, "steps": request.steps,
            "guidance": request.guidance, "strength": request.strength,
            "options": request.provider_options, "scheduler": opts.scheduler or "model default",
        }  # fmt: skip

    def flow(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> Flow:
        from limner.local.options import precheck

        opts = precheck(op, spec, request)
        from limner.local.engine import get_engine

        job = get_engine().submit(op, request, spec, opts)
        try:
            while True:
                event = yield Run(job.next_event)
                if event.kind == "status":
                    yield Progress(None, event.message)
                elif event.kind == "step":
                    yield Progress(
                        event.step / max(event.total, 1), f"step {event.step}/{event.total}"
                    )
                elif event.kind == "error":
                    raise _user_facing(event.error)
                else:
                    return _output(event.output)
        except DeadlineExceeded:
            job.cancel()
            yield Run(job.wait)
            raise
        except GeneratorExit:
            job.cancel()
            raise


def _user_facing(error: BaseException | None) -> BaseException:
    from limner.local.ops import JobCancelled

    if isinstance(error, JobCancelled):
        return errors.JobFailedError("local: the generation was cancelled.", provider="local")
    return error or errors.ProviderError("local: the job ended without a result.", provider="local")


def _output(result: dict[str, Any]) -> ProviderOutput:
    info = result["info"]
    images = []
    for image, seed in zip(result["images"], result["seeds"], strict=True):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        images.append(image_from_bytes(buf.getvalue(), seed=seed))
    summary = (
        f"local: {info['pipeline']} with {info['scheduler']}, {info['steps']} steps, guidance "
        f"{info['guidance']:g}, seeds {', '.join(map(str, info['seeds']))}, model revision "
        f"{info['model_revision']}, " + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    )
    if info.get("loras"):
        loras = ", ".join(f"{name} {weight:g}" for name, weight in info["loras"].items())
        summary += f"; LoRAs {loras}" + (" (fused)" if info.get("loras_fused") else "")
    return ProviderOutput(
        images=images,
        usage=Usage(raw=info),
        warnings=[*result["notes"], summary],
        cost_usd=0.0,
        raw=info,
    )
