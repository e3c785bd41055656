"""The engine: resolve the model, check the request, call the provider, store and log.

``Limner`` is the one entry point the library functions, the CLI and the server share. Its sync
and async faces run the same plan; only the driver of the provider flow differs.

Resuming: an asynchronous provider's flow announces each job it submits
(``limner.flows.Submitted``; record the handle with ``limner.flows.on_submitted``). After a
crash, ``run(op, request, resume_handle=handle)`` / ``arun(...)`` with the same request follows
that job to its result instead of submitting it again: the same checks, guards, storage, log
entry and cost as a normal run, never served from the cache. It raises
``errors.ResumeUnsupportedError`` (before any guard or network call) when the provider answers
synchronously or the request needs several calls.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from limner import codec, errors
from limner.catalog import Catalog, ModelSpec, get_catalog
from limner.config import KeyStore, UserConfig, limner_home
from limner.fetch import SafeFetcher
from limner.flows import Flow, ProviderOutput
from limner.guards import default_guards
from limner.http import AsyncFlowRunner, FlowRunner, RetryPolicy, new_async_client, new_client
from limner.metadata import embed, strip
from limner.pricing import actual_cost, estimate_cost
from limner.providers import get_provider_class, plugin_catalog_entries
from limner.providers.base import Provider
from limner.store import LogEntry, Store, StoredImage
from limner.types import GeneratedImage, ImageRequest, Operation, Result, Usage
from limner.validate import check_request

__all__ = ["Guard", "Limner", "Plan"]

# The order in which providers are tried for a default model when their key is set.
DEFAULT_MODELS = (
    ("openai", "openai:gpt-image-2"),
    ("bfl", "bfl:flux-2-pro"),
    ("gemini", "gemini:gemini-3.1-flash-image"),
    ("ideogram", "ideogram:ideogram-v3"),
    ("stability", "stability:sd3.5-large"),
    ("recraft", "recraft:recraftv4"),
    ("fal", "fal:fal-ai/flux/schnell"),
    ("replicate", "replicate:black-forest-labs/flux-schnell"),
)
LOCAL_DEFAULT = "local:sd-turbo"


@dataclass
class Plan:
    """A checked request, ready to send: what the guards and the log see."""

    op: Operation
    spec: ModelSpec
    provider: Provider
    request: ImageRequest
    warnings: list[str]
    chunks: list[ImageRequest]
    cache_key: str | None
    estimated_cost: float | None
    reservations: list[Any] = field(default_factory=list)


class Guard(Protocol):
    """Runs before a request is sent (budgets, usage policy) and after it settles."""

    def before_send(self, plan: Plan) -> Any: ...

    def settle(self, plan: Plan, token: Any, cost: float | None) -> None: ...

    def release(self, plan: Plan, token: Any) -> None: ...


def _registered_models(home: Path) -> list[ModelSpec]:
    """Models registered with `limner models add` (``<home>/models.toml``)."""
    from limner.local.models import registered_specs

    return registered_specs(home)


def _provider_meta(outputs: list[ProviderOutput]) -> dict[str, Any] | None:
    """What providers report beyond images (local seed, scheduler and versions; quotes), for
    the log; left out when it is too large to belong in a log row."""
    merged: dict[str, Any] = {}
    for out in outputs:
        merged.update(out.raw)
    if not merged:
        return None
    text = codec.json_dumps(merged, default=str)
    return codec.json_loads_exact(text) if len(text) <= 16_384 else None


def _retired_error(spec: ModelSpec, provider: Provider) -> errors.RetiredModelError:
    envs = type(provider).base_url_envs or (f"LIMNER_{spec.provider.upper()}_BASE_URL",)
    instead = f"Use {spec.successor} instead" if spec.successor else "Pick another model"
    return errors.RetiredModelError(
        f"{spec.ref} is retired. {spec.lifecycle_note}".strip(),
        hint=f"{instead}, or point {envs[0]} at a compatible server.",
    )


def request_hash(
    op: Operation, spec: ModelSpec, request: ImageRequest, *, revision: str | None = None
) -> str:
    """Identity of a request after normalisation: the cache key and the batch resume key.
    ``revision`` names the model's weights where they can change under one name."""
    payload = request.model_dump(
        mode="json", exclude={"images", "mask", "references", "tags", "project", "model"}
    )
    payload["op"] = op.value
    payload["model"] = spec.ref
    if revision:
        payload["revision"] = revision
    payload["images"] = [img.sha256 for img in request.images]
    payload["mask"] = request.mask.sha256 if request.mask else None
    payload["references"] = [(r.kind, r.weight, r.image.sha256) for r in request.references]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def split_n(request: ImageRequest, max_n: int) -> list[ImageRequest]:
    """Split ``n`` above a model's per-call maximum into calls; seeds advance per image."""
    if request.n <= max_n:
        return [request]
    chunks, offset = [], 0
    for _ in range(math.ceil(request.n / max_n)):
        size = min(max_n, request.n - offset)
        seed = request.seed + offset if request.seed is not None else None
        chunks.append(request.model_copy(update={"n": size, "seed": seed}))
        offset += size
    return chunks


class Limner:
    """A configured limner: store, keys, providers and HTTP clients.

    Pass ``http_client`` / ``async_http_client`` to inject transports (tests, proxies);
    ``keys`` and ``base_urls`` override the environment per provider.
    """

    def __init__(
        self,
        *,
        home: str | Path | None = None,
        store: Store | None = None,
        catalog: Catalog | None = None,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
        keys: dict[str, str] | None = None,
        base_urls: dict[str, str] | None = None,
        retry: RetryPolicy | None = None,
        deadline_s: float | None = None,
        guards: list[Guard] | None = None,
        embed_metadata: bool = True,
        commercial: bool = False,
        on_progress: Callable[[float | None, str], None] | None = None,
    ) -> None:
        self.home = Path(home) if home else limner_home()
        self.key_store = KeyStore(self.home)
        self.config = UserConfig(self.home)
        self._store = store
        self._store_lock = threading.Lock()
        self.catalog = catalog or get_catalog(
            [*plugin_catalog_entries(), *_registered_models(self.home)]
        )
        self._http = http_client
        self._owns_http = http_client is None
        self._ahttp = async_http_client
        self.keys = dict(keys or {})
        self.base_urls = dict(base_urls or {})
        self.retry = retry or RetryPolicy()
        self.deadline_s = deadline_s
        self.guards: list[Guard] = list(guards) if guards is not None else default_guards(self)
        self.embed_metadata = embed_metadata
        self.commercial = commercial  # refuse models whose licence forbids commercial use
        self.on_progress = on_progress
        self._providers: dict[str, Provider] = {}

    # -- resources -----------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        with self._store_lock:  # concurrent arun calls on a fresh client open it once
            if self._store is None:
                self._store = Store(self.home)
        return self._store

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = new_client()
        return self._http

    def close(self) -> None:
        if self._http is not None and self._owns_http:
            self._http.close()
            self._http = None
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> Limner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- models and providers ------------------------------------------------------------------
    def default_model(self) -> str:
        """The configured default, else the first provider with a key, else the local engine."""
        configured = os.environ.get("LIMNER_DEFAULT_MODEL") or self.config.get("default_model")
        if configured:
            return str(configured)
        for provider, model in DEFAULT_MODELS:
            if self.catalog.find(model) and (provider in self.keys or self._has_key_for(provider)):
                return model
        import importlib.util

        if importlib.util.find_spec("diffusers") and importlib.util.find_spec("torch"):
            return LOCAL_DEFAULT
        raise errors.UserError(
            "No model given and none configured.",
            hint=(
                "Pass -m MODEL (see `limner models`), set a provider key (e.g. OPENAI_API_KEY or "
                "`limner keys set openai`), set LIMNER_DEFAULT_MODEL, or install the local engine "
                "with pip install 'limner[local]'."
            ),
        )

    def _has_key_for(self, provider: str) -> bool:
        try:
            cls = get_provider_class(provider)
        except errors.LimnerError:
            return False
        return bool(cls.key_env and os.environ.get(cls.key_env)) or bool(
            self.key_store.get(provider)
        )

    def resolve(self, model: str | None) -> ModelSpec:
        name = model or self.default_model()
        try:
            return self.catalog.resolve(name)
        except errors.UnknownModelError as unknown:
            # A provider may take names that no catalog lists (local:/path/to/model).
            provider, sep, model_id = name.partition(":")
            try:
                spec_for = getattr(get_provider_class(provider), "spec_for", None) if sep else None
            except errors.LimnerError:
                raise unknown from None
            spec = spec_for(model_id) if spec_for else None
            if spec is None:
                raise
            return spec

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            cls = get_provider_class(name)
            # Optional keys (a Midjourney proxy's secret) are looked up too; only keyless providers skip it.
            key = (
                cls.resolve_key(self.keys.get(name), self.key_store)
                if cls.needs_key or cls.key_env
                else None
            )
            base_url = cls.resolve_base_url(self.base_urls.get(name), self.config)
            self._providers[name] = cls(api_key=key, base_url=base_url)
        return self._providers[name]

    # -- planning ------------------------------------------------------------------------------
    def plan(self, op: Operation | str, request: ImageRequest) -> Plan:
        """Check everything that can be checked before a network call."""
        op = Operation(op)
        spec = self.resolve(request.model)
        request, warnings = check_request(op, request, spec, self.catalog)
        provider = self.provider(spec.provider)
        if spec.is_retired() and not provider.uses_custom_base_url:
            raise _retired_error(spec, provider)
        if type(provider).needs_key and not provider.api_key:
            raise type(provider).missing_key_error()
        return Plan(
            op=op,
            spec=spec,
            provider=provider,
            request=request,
            warnings=warnings,
            chunks=split_n(request, spec.max_n),
            cache_key=request_hash(op, spec, request, revision=provider.model_revision(spec)),
            estimated_cost=estimate_cost(spec, request, op=op),
        )

    # -- running -------------------------------------------------------------------------------
    def run(
        self,
        op: Operation | str,
        request: ImageRequest,
        *,
        use_cache: bool = True,
        parent_id: str | None = None,
        resume_handle: str | None = None,
    ) -> Result:
        started = time.perf_counter()
        prepared = self._prepare(op, request, use_cache, parent_id, resume_handle, started)
        if isinstance(prepared, Result):
            return prepared
        plan, resumed = prepared
        try:
            outputs = self._run_chunks(plan, resumed)
        except errors.LimnerError as exc:
            self._failed(plan, exc, parent_id)
            raise
        return self._finish(plan, outputs, started, parent_id)

    async def arun(
        self,
        op: Operation | str,
        request: ImageRequest,
        *,
        use_cache: bool = True,
        parent_id: str | None = None,
        resume_handle: str | None = None,
    ) -> Result:
        started = time.perf_counter()
        # One trip to a worker thread for everything before the provider call (a server
        # pays for each trip on every request).
        prepared = await asyncio.to_thread(
            self._prepare, op, request, use_cache, parent_id, resume_handle, started
        )
        if isinstance(prepared, Result):
            return prepared
        plan, resumed = prepared
        try:
            outputs = await self._arun_chunks(plan, resumed)
        except errors.LimnerError as exc:
            await asyncio.to_thread(self._failed, plan, exc, parent_id)
            raise
        return await asyncio.to_thread(self._finish, plan, outputs, started, parent_id)

    def _prepare(
        self,
        op: Operation | str,
        request: ImageRequest,
        use_cache: bool,
        parent_id: str | None,
        resume_handle: str | None,
        started: float,
    ) -> Result | tuple[Plan, Flow | None]:
        """Plan, answer from the cache, or reserve with the guards: the cached Result, or the
        plan (and the flow that resumes ``resume_handle``) ready to send."""
        plan = self.plan(op, request)
        resumed = self._resume_flow(plan, resume_handle)
        cached = self._cached(plan, use_cache and resumed is None, parent_id, started)
        if cached:
            return cached
        self._before_send(plan)
        return plan, resumed

    def _fetcher(self, provider: Provider) -> SafeFetcher:
        local = provider.is_local_endpoint
        return SafeFetcher(allow_loopback=local, allow_http=local)

    def _runner_kwargs(self, plan: Plan) -> dict[str, Any]:
        return {
            "retry": self.retry,
            "fetcher": self._fetcher(plan.provider),
            "deadline_s": self.deadline_s,
            "on_progress": self.on_progress,
        }

    def _resume_flow(self, plan: Plan, handle: str | None) -> Flow | None:
        """The flow that follows the job ``handle`` names, or None for a fresh run."""
        if handle is None:
            return None
        if len(plan.chunks) != 1:
            raise errors.ResumeUnsupportedError(
                f"{plan.spec.ref} makes {len(plan.chunks)} calls for n={plan.request.n}; only a "
                "request made in one call can be resumed.",
                hint="Run the request again without a resume handle.",
            )
        flow = plan.provider.resume_flow(plan.op, plan.chunks[0], plan.spec, handle)
        if flow is None:
            raise errors.ResumeUnsupportedError(
                f"{plan.spec.ref} answers in one request: there is no submitted job to resume.",
                hint="Run the request again without a resume handle.",
            )
        return flow

    def _run_chunks(self, plan: Plan, resumed: Flow | None = None) -> list[ProviderOutput]:
        def one(chunk: ImageRequest, flow: Flow | None = None) -> ProviderOutput:
            runner = FlowRunner(self.http, plan.spec.provider, **self._runner_kwargs(plan))
            return runner.run(flow or plan.provider.flow(plan.op, chunk, plan.spec))

        if len(plan.chunks) == 1:
            return [one(plan.chunks[0], resumed)]
        with ThreadPoolExecutor(max_workers=min(len(plan.chunks), 8)) as pool:
            # Each call in a copy of this context, so on_submitted listeners hear every thread.
            calls = [pool.submit(contextvars.copy_context().run, one, c) for c in plan.chunks]
            return [call.result() for call in calls]

    async def _arun_chunks(self, plan: Plan, resumed: Flow | None = None) -> list[ProviderOutput]:
        async def one(client: httpx.AsyncClient, chunk: ImageRequest) -> ProviderOutput:
            runner = AsyncFlowRunner(client, plan.spec.provider, **self._runner_kwargs(plan))
            return await runner.run(resumed or plan.provider.flow(plan.op, chunk, plan.spec))

        if self._ahttp is not None:
            return list(await asyncio.gather(*(one(self._ahttp, c) for c in plan.chunks)))
        async with new_async_client() as client:
            return list(await asyncio.gather(*(one(client, c) for c in plan.chunks)))

    # -- guards, cache, storage ----------------------------------------------------------------
    def _before_send(self, plan: Plan) -> None:
        taken: list[tuple[Guard, Any]] = []
        try:
            for guard in self.guards:
                taken.append((guard, guard.before_send(plan)))
        except errors.LimnerError as exc:
            for guard, token in taken:
                guard.release(plan, token)
            if isinstance(exc, errors.PolicyError):
                self._failed(plan, exc, None, status="refused")
            raise
        plan.reservations = taken

    def _settle(self, plan: Plan, cost: float | None) -> None:
        for guard, token in plan.reservations:
            guard.settle(plan, token, cost)

    def _cached(
        self, plan: Plan, use_cache: bool, parent_id: str | None, started: float
    ) -> Result | None:
        if not use_cache or plan.request.seed is None or plan.cache_key is None:
            return None
        hit = self.store.find_cached(plan.cache_key)
        if hit is None:
            return None
        entry = self._entry(plan, "ok", parent_id)
        entry.cache_hit, entry.cost_usd, entry.images = True, 0.0, hit.images
        entry.timings = {"total": time.perf_counter() - started}
        self.store.record(entry)
        images = [
            GeneratedImage(
                data=img.path.read_bytes(),
                media_type=img.media_type,
                width=img.width or 0,
                height=img.height or 0,
                seed=img.seed,
                revised_prompt=img.revised_prompt,
                sha256=img.sha256,
                path=img.path,
            )
            for img in hit.images
        ]
        return Result(
            images=images,
            model=plan.spec.ref,
            provider=plan.spec.provider,
            operation=plan.op,
            warnings=[*plan.warnings, f"cache hit: images from generation {hit.id}"],
            usage=Usage(),
            cost_usd=0.0,
            generation_id=entry.id,
            cache_hit=True,
            timings=entry.timings,
        )

    def _entry(self, plan: Plan, status: str, parent_id: str | None) -> LogEntry:
        req = plan.request
        params = req.model_dump(
            mode="json",
            exclude={
                "prompt",
                "negative_prompt",
                "images",
                "mask",
                "references",
                "tags",
                "project",
            },
            exclude_none=True,
        )
        params["images"] = [img.sha256 for img in req.images]
        if req.mask:
            params["mask"] = req.mask.sha256
        return LogEntry(
            operation=plan.op.value,
            provider=plan.spec.provider,
            model=plan.spec.ref,
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            status=status,
            params=params,
            request_hash=plan.cache_key,
            warnings=plan.warnings or None,
            tags=req.tags or None,
            project=req.project,
            parent_id=parent_id,
        )

    def _failed(
        self, plan: Plan, exc: errors.LimnerError, parent_id: str | None, status: str = "error"
    ) -> None:
        for guard, token in plan.reservations:
            guard.release(plan, token)
        entry = self._entry(plan, status, parent_id)
        entry.error_type, entry.error_message = type(exc).__name__, str(exc)
        entry.provider_request_id = getattr(exc, "request_id", None)
        self.store.record(entry)

    def _finish(
        self, plan: Plan, outputs: list[ProviderOutput], started: float, parent_id: str | None
    ) -> Result:
        provider_time = time.perf_counter() - started
        usage = Usage()
        images: list[GeneratedImage] = []
        warnings = list(plan.warnings)
        reported: float | None = None
        for out in outputs:
            usage = usage.merged(out.usage)
            images.extend(out.images)
            warnings.extend(out.warnings)
            if out.cost_usd is not None:
                reported = (reported or 0.0) + out.cost_usd
        cost = actual_cost(plan.spec, plan.request, usage, len(images), reported, plan.op)
        entry = self._entry(plan, "ok", parent_id)
        stored = self._store_images(plan, entry, images)
        entry.images = stored
        entry.cost_usd = cost
        entry.usage = usage.model_dump(exclude_none=True, exclude={"raw"})
        meta = _provider_meta(outputs)
        if meta:
            entry.params = {**entry.params, "provider_meta": meta}
        entry.provider_request_id = ",".join(o.request_id for o in outputs if o.request_id) or None
        entry.warnings = warnings or None
        total = time.perf_counter() - started
        entry.timings = {"provider": round(provider_time, 4), "total": round(total, 4)}
        self.store.record(entry)
        self._settle(plan, cost)
        return Result(
            images=images,
            model=plan.spec.ref,
            provider=plan.spec.provider,
            operation=plan.op,
            warnings=warnings,
            usage=usage,
            cost_usd=cost,
            request_id=entry.provider_request_id,
            timings=entry.timings,
            generation_id=entry.id,
        )

    def _store_images(
        self, plan: Plan, entry: LogEntry, images: list[GeneratedImage]
    ) -> list[StoredImage]:
        stored = []
        for index, image in enumerate(images):
            if image.seed is None and plan.request.seed is not None and plan.spec.seed:
                image.seed = plan.request.seed + index
            if self.embed_metadata:
                meta = {
                    "prompt": plan.request.prompt,
                    "negative_prompt": plan.request.negative_prompt,
                    "model": plan.spec.ref,
                    "provider": plan.spec.provider,
                    "seed": image.seed,
                    "steps": plan.request.steps,
                    "guidance": plan.request.guidance,
                    "size": f"{image.width}x{image.height}" if image.width else None,
                    "quality": plan.request.quality,
                    "style": plan.request.style,
                    "strength": plan.request.strength,
                    "operation": plan.op.value,
                    "revised_prompt": image.revised_prompt,
                    "generation_id": entry.id,
                    "created_at": entry.created_at,
                }
                image.data = embed(image.data, image.media_type, meta)
                if os.environ.get("LIMNER_C2PA_CERT"):
                    from limner.ops.provenance import sign_from_env

                    image.data = sign_from_env(
                        image.data, model=plan.spec.ref, provider=plan.spec.provider
                    )
            else:  # no metadata means none from the provider either (C2PA, EXIF, text chunks)
                image.data = strip(image.data, image.media_type)
            item = self.store.write_asset(image.data, image.media_type, image.width, image.height)
            item.seed, item.revised_prompt = image.seed, image.revised_prompt
            image.sha256, image.path = item.sha256, item.path
            stored.append(item)
        return stored
