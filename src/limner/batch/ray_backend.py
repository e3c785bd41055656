"""Running a batch on a Ray cluster.

API items run as Ray tasks that share one rate-limiter actor, so the cluster as a whole keeps to
each provider's limit (and follows its 429s and headers) exactly as one machine does. Items for
the local engine run on GPU actors, one per GPU, each keeping its model resident between items.
Every worker writes into the shared store: point ``LIMNER_DATABASE_URL`` at PostgreSQL (and
``LIMNER_HOME`` at shared storage for the images) when the cluster spans machines.

The claim-send-record protocol is the same as on one machine: a task claims its item in the
store, sends, and marks it done in the transaction that records the generation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from limner import errors
from limner.batch.ratelimit import RateLimiter

if TYPE_CHECKING:
    from limner.batch.runner import BatchOptions, BatchRunner, ItemCallback, ItemOutcome
    from limner.batch.state import ItemRow

__all__ = ["RemoteRateLimiter", "ray_executor"]

LOCAL_PROVIDERS = frozenset({"local"})
# Environment a worker needs to act like the driver: home, store, keys, base URLs, defaults.
_ENV_PREFIXES = ("LIMNER_",)
_ENV_SUFFIXES = ("_API_KEY", "_API_TOKEN", "_KEY", "_BASE_URL", "_API_SECRET", "_PROXY_URL")
_WORKER_RUNNERS: dict[tuple[Any, ...], BatchRunner] = {}


def _worker_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k.startswith(_ENV_PREFIXES) or k.endswith(_ENV_SUFFIXES) or k == "HF_HUB_OFFLINE"
    }


class RemoteRateLimiter(RateLimiter):
    """A worker's limiter: the buckets live in one actor the whole cluster shares."""

    def __init__(self, actor: Any) -> None:
        super().__init__()
        self.actor = actor

    def reserve(self, provider: str) -> float:
        import ray

        return float(ray.get(self.actor.reserve.remote(provider)))

    def signal(self, provider: str, status: int, headers: Mapping[str, str]) -> None:
        self.actor.signal.remote(provider, status, dict(headers))


class _LimiterActor:
    def __init__(self, limits: dict[str, tuple[str, float | None, int]]) -> None:
        self.limiter = RateLimiter()
        for provider, (base_url, rpm, burst) in limits.items():
            self.limiter.add(provider, base_url, rpm, burst)

    def reserve(self, provider: str) -> float:
        return self.limiter.reserve(provider)

    def signal(self, provider: str, status: int, headers: dict[str, str]) -> None:
        self.limiter.signal(provider, status, headers)

    def stats(self) -> dict[str, int]:
        return dict(self.limiter.stats)


def _worker_runner(options: dict[str, Any], limiter: Any) -> BatchRunner:
    """One runner per worker process (and options), so clients and models stay warm."""
    from limner.batch.runner import BatchOptions, BatchRunner

    actor_id = getattr(getattr(limiter, "_actor_id", None), "hex", lambda: id(limiter))()
    key = (os.environ.get("LIMNER_HOME"), tuple(sorted(options.items())), actor_id)
    runner = _WORKER_RUNNERS.get(key)
    if runner is None:
        runner = BatchRunner(BatchOptions(**options), limiter=RemoteRateLimiter(limiter))
        _WORKER_RUNNERS[key] = runner
    return runner


def _run_remote(
    options: dict[str, Any], limiter: Any, batch_id: str, run_id: str, row: dict[str, Any]
) -> dict[str, Any]:
    from limner.batch.state import ItemRow

    outcome = _worker_runner(options, limiter).run_item(batch_id, run_id, ItemRow(**row))
    return asdict(outcome)


class _EngineActor:
    """Holds a runner (and so the local engine's loaded model) for the actor's lifetime."""

    def __init__(self, options: dict[str, Any], limiter: Any) -> None:
        self.options, self.limiter = options, limiter
        self.items = 0
        # Every pipeline object this actor has held: a count above one per model means the
        # model was loaded again (evicted, or not kept resident) instead of reused.
        self.pipelines: set[int] = set()

    def run(self, batch_id: str, run_id: str, row: dict[str, Any]) -> dict[str, Any]:
        outcome = _run_remote(self.options, self.limiter, batch_id, run_id, row)
        self.items += 1
        self.pipelines.update(_resident_pipelines())
        return outcome

    def stats(self) -> dict[str, int]:
        return {"local:engine_items": self.items, "local:model_loads": len(self.pipelines)}


def _resident_pipelines() -> set[int]:
    from limner.local.engine import get_engine

    return {id(m.pipe) for m in get_engine().cache.resident()}


def _connect(address: str, env: dict[str, str]) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False}
    # A local instance listens on loopback only and without a dashboard: nothing to expose.
    local = {**kwargs, "_node_ip_address": "127.0.0.1", "include_dashboard": False}
    if address == "local":
        ray.init(**local)
        return
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError:
        if address != "auto":
            raise errors.UserError(
                f"Cannot reach a Ray cluster at {address!r}.",
                hint="Check the address (ray://HEAD:10001 or HEAD:6379), or pass --ray local.",
            ) from None
        ray.init(**local)


def ray_executor(address: str) -> Any:
    """An executor for ``BatchRunner.run`` that runs the items on Ray at ``address``."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise errors.UserError(
            "--ray needs Ray installed.", hint="pip install 'limner[ray]'"
        ) from None

    def execute(
        runner: BatchRunner,
        batch_id: str,
        run_id: str,
        rows: list[ItemRow],
        on_item: ItemCallback | None,
    ) -> list[ItemOutcome]:
        return _execute(address, runner, batch_id, run_id, rows, on_item)

    return execute


def _execute(
    address: str,
    runner: BatchRunner,
    batch_id: str,
    run_id: str,
    rows: list[ItemRow],
    on_item: ItemCallback | None,
) -> list[ItemOutcome]:
    import ray

    from limner.batch.runner import ItemOutcome

    env = {**_worker_env(), "LIMNER_HOME": str(runner.home)}
    _connect(address, env)
    limits = {p: (url, b.rpm, b.burst) for p, url, b in runner.limiter._buckets}
    limiter: Any = ray.remote(num_cpus=0)(_LimiterActor).remote(limits)
    options = _options_dict(runner.options)
    task = ray.remote(num_cpus=0.5, max_retries=0)(_run_remote).options(
        runtime_env={"env_vars": env}
    )
    engine_rows = [r for r in rows if runner.provider_of(r) in LOCAL_PROVIDERS]
    api_rows = [r for r in rows if r not in engine_rows]
    in_flight_cap = max(runner.options.concurrency * max(len(limits), 1), 1)
    pending: list[Any] = []
    outcomes: list[ItemOutcome] = []
    actors = _engine_actors(options, limiter, env) if engine_rows else []
    queue = [(r, None) for r in api_rows] + [
        (r, actors[i % len(actors)]) for i, r in enumerate(engine_rows)
    ]
    while queue or pending:
        while queue and len(pending) < in_flight_cap + len(actors):
            row, actor = queue.pop(0)
            payload = {k: v for k, v in row.__dict__.items()}
            ref = (
                actor.run.remote(batch_id, run_id, payload)
                if actor
                else task.remote(options, limiter, batch_id, run_id, payload)
            )
            pending.append(ref)
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            outcome = ItemOutcome(**ray.get(ref))
            outcomes.append(outcome)
            if on_item:
                on_item(outcome)
    runner.limiter.stats.update(ray.get(limiter.stats.remote()))
    for actor_stats in ray.get([actor.stats.remote() for actor in actors]):
        runner.limiter.stats.update(actor_stats)  # Counter.update adds across actors
    runner.limiter.stats["local:engine_actors"] += len(actors)
    return outcomes


def _engine_actors(options: dict[str, Any], limiter: Any, env: dict[str, str]) -> list[Any]:
    """One actor per GPU in the cluster (one CPU actor when there is none)."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    cls = ray.remote(_EngineActor)
    resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    return [
        cls.options(runtime_env={"env_vars": env}, **resources).remote(options, limiter)
        for _ in range(max(gpus, 1))
    ]


def _options_dict(options: BatchOptions) -> dict[str, Any]:
    return {k: v for k, v in asdict(options).items()}
