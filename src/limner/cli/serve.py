"""``limner serve`` (the HTTP server) and ``limner server-keys`` (its API keys)."""

from __future__ import annotations

import os

import click

from limner.cli._common import emit_json, json_option

__all__ = ["mcp", "serve", "server_keys"]


def _need_fastapi() -> None:
    import importlib.util

    from limner import errors

    if importlib.util.find_spec("fastapi") is None:
        raise errors.UserError(
            "The server needs FastAPI.", hint="Install it with pip install 'limner[server]'."
        )


@click.command()
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8000).")
@click.option(
    "--public-url", default=None, help="URL clients use to reach this server (for url results)."
)
@click.option("--workers", type=int, default=None, help="Jobs run at once by this process.")
@click.option("--no-worker", is_flag=True, help="Serve the API only; run no jobs in this process.")
@click.option(
    "--processes",
    type=int,
    default=1,
    show_default=True,
    help="Server processes sharing the port and the job queue (per-process: rate limits, A1111 options).",
)
@click.option(
    "--keep-alive",
    type=click.IntRange(min=1),
    default=75,
    show_default=True,
    help="Seconds an idle client connection stays open. Keep it above the idle timeout of the "
    "clients and load balancers in front (httpx 5 s, AWS ALB 60 s), or a request sent as the "
    "server closes the connection fails.",
)
@click.option("--log-level", default="info", show_default=True)
def serve(
    host: str | None,
    port: int | None,
    public_url: str | None,
    workers: int | None,
    no_worker: bool,
    processes: int,
    keep_alive: int,
    log_level: str,
) -> None:
    """Serve the OpenAI- and A1111-compatible APIs, the job queue and the gallery."""
    _need_fastapi()
    import uvicorn

    from limner.server.app import create_app
    from limner.server.auth import KeyRing
    from limner.server.settings import ServerSettings
    from limner.store import Store

    settings = ServerSettings.from_env(
        host=host, port=port, public_url=public_url, workers=workers,
        run_worker=False if no_worker else None,
    )  # fmt: skip
    store = Store(settings.home)
    try:
        settings.check_bind(KeyRing(store).any_keys())
    finally:
        store.close()
    click.echo(f"limner serving on {settings.base_url} (gallery at {settings.base_url}/)", err=True)
    if processes > 1:
        # Each process builds its app from the environment, so pass the settings through it.
        for name, value in (("HOST", settings.host), ("PORT", settings.port), ("PUBLIC_URL", settings.public_url),
                            ("WORKERS", settings.workers), ("RUN_WORKER", settings.run_worker)):  # fmt: skip
            if value is not None:
                os.environ[f"LIMNER_SERVER_{name}"] = str(value)
        uvicorn.run(
            "limner.server.app:create_app", factory=True, workers=processes, host=settings.host,
            port=settings.port, log_level=log_level, access_log=False, timeout_keep_alive=keep_alive,
        )  # fmt: skip
        return
    app = create_app(settings)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=log_level, access_log=False,
        timeout_keep_alive=keep_alive,
    )  # fmt: skip


@click.command()
def mcp() -> None:
    """Serve limner's tools over MCP on stdin/stdout (for AI assistants)."""
    import importlib.util

    from limner import errors

    if importlib.util.find_spec("mcp") is None:
        raise errors.UserError(
            "The MCP server needs the mcp package.",
            hint="Install it with pip install 'limner[server]'.",
        )
    from limner.server.mcp_server import run_stdio

    run_stdio()


@click.group("server-keys")
def server_keys() -> None:
    """Create, list and revoke the server's API keys (stored hashed)."""


BUDGET_HELP = (
    "Spending cap of the key, e.g. 5/day or 50/month (repeat for both); a request that would "
    "break it gets 402."
)


def _budget(budgets: tuple[str, ...]) -> dict[str, float]:
    from limner.server.auth import parse_budget

    return dict(parse_budget(text) for text in budgets)


@server_keys.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    default=("generate", "read"),
    show_default=True,
    type=click.Choice(["generate", "read", "admin"]),
    help="Repeat for several scopes.",
)
@click.option(
    "--rate", type=int, default=None, help="Requests per minute allowed (default: no limit)."
)
@click.option("--budget", "budgets", multiple=True, metavar="USD/PERIOD", help=BUDGET_HELP)
@json_option
def create_key(
    name: str, scopes: tuple[str, ...], rate: int | None, budgets: tuple[str, ...], as_json: bool
) -> None:
    """Create a key; its secret is printed once and never stored."""
    from limner.server.auth import KeyRing
    from limner.store import Store

    budget = _budget(budgets)
    store = Store()
    try:
        key_id, secret = KeyRing(store).create(name, list(scopes), rate, budget)
    finally:
        store.close()
    if as_json:
        emit_json({"id": key_id, "key": secret, "scopes": sorted(scopes), "budget": budget})
    else:
        click.echo(secret)
        click.echo(
            f"Key {key_id} ({', '.join(sorted(scopes))}). Store it now: it is not shown again.",
            err=True,
        )


@server_keys.command("list")
@json_option
def list_keys(as_json: bool) -> None:
    """List keys (never their secrets)."""
    from limner.server.auth import KeyRing
    from limner.store import Store

    store = Store()
    try:
        keys = KeyRing(store).list()
    finally:
        store.close()
    if as_json:
        emit_json(keys)
        return
    for key in keys:
        state = "revoked" if key["revoked"] else "active"
        caps = ", ".join(f"${b['limit_usd']:g}/{b['scope']}" for b in key["budget"]) or "no budget"
        click.echo(
            f"{key['id']}  {key['prefix']}…  {key['name']}  {','.join(key['scopes'])}  {state}"
            f"  {caps}"
        )


@server_keys.command("budget")
@click.argument("key_id")
@click.option("--budget", "budgets", multiple=True, metavar="USD/PERIOD", help=BUDGET_HELP)
@click.option("--clear", is_flag=True, help="Remove the key's budget.")
@json_option
def key_budget(key_id: str, budgets: tuple[str, ...], clear: bool, as_json: bool) -> None:
    """Show a key's budget (spent, reserved, left), or set it with --budget / --clear."""
    from limner import errors
    from limner.server.auth import KeyRing
    from limner.store import Store

    if clear and budgets:
        raise errors.UserError("Give --budget or --clear, not both.")
    store = Store()
    try:
        ring = KeyRing(store)
        if (clear or budgets) and not ring.set_budget(key_id, None if clear else _budget(budgets)):
            raise errors.UserError(f"No key {key_id!r}.", hint="See `limner server-keys list`.")
        if ring.by_id(key_id) is None:
            raise errors.UserError(f"No key {key_id!r}.", hint="See `limner server-keys list`.")
        status = ring.budget_status(key_id)
    finally:
        store.close()
    if as_json:
        emit_json({"id": key_id, "budget": status})
        return
    for cap in status:
        click.echo(
            f"{cap['scope']}: ${cap['limit_usd']:g}  spent ${cap['spent_usd']:.4f}"
            f"  reserved ${cap['reserved_usd']:.4f}  left ${cap['remaining_usd']:.4f}"
        )
    if not status:
        click.echo(f"Key {key_id} has no budget.")


@server_keys.command("revoke")
@click.argument("key_id")
def revoke_key(key_id: str) -> None:
    """Revoke a key by its id."""
    from limner import errors
    from limner.server.auth import KeyRing
    from limner.store import Store

    store = Store()
    try:
        if not KeyRing(store).revoke(key_id):
            raise errors.UserError(
                f"No active key {key_id!r}.", hint="See `limner server-keys list`."
            )
    finally:
        store.close()
    click.echo(f"Revoked {key_id}.")
