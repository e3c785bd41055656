"""``limner keys``: API keys in a 0600 file; environment variables win over it."""

from __future__ import annotations

import click

from limner.cli._common import emit_json, json_option


@click.group()
def keys() -> None:
    """Manage provider API keys (stored in <LIMNER_HOME>/keys.json, mode 0600)."""


def _known_provider(name: str) -> None:
    from limner.errors import InvalidRequestError
    from limner.providers import provider_names

    if name not in provider_names():
        raise InvalidRequestError(
            f"Unknown provider {name!r}.", hint=f"Providers: {', '.join(provider_names())}."
        )


@keys.command("set")
@click.argument("provider")
@click.option("--value", help="The key (read from a hidden prompt when omitted).")
def set_key(provider: str, value: str | None) -> None:
    """Store the key for PROVIDER."""
    from limner.config import KeyStore

    _known_provider(provider)
    if value is None:
        value = click.prompt(f"Key for {provider}", hide_input=True)
    if not value or not value.strip():
        from limner.errors import InvalidRequestError

        raise InvalidRequestError("The key is empty.")
    KeyStore().set(provider, value.strip())
    click.echo(f"Saved the key for {provider}.")


@keys.command("list")
@json_option
def list_keys(as_json: bool) -> None:
    """Providers with a key, and where it comes from (values are never printed)."""
    import os

    from limner.config import KeyStore
    from limner.providers import get_provider_class, provider_names

    stored = set(KeyStore().names())
    rows = []
    for name in provider_names():
        try:
            env = get_provider_class(name).key_env
        except Exception:
            env = None
        source = (
            "env " + env
            if env and os.environ.get(env)
            else ("keys.json" if name in stored else None)
        )
        if source:
            rows.append({"provider": name, "source": source})
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo(f"{row['provider']}: {row['source']}")
    if not rows:
        click.echo("No keys. Set one with `limner keys set PROVIDER` or the provider's env var.")


@keys.command("path")
def key_path() -> None:
    """Print the path of the keys file."""
    from limner.config import KeyStore

    click.echo(str(KeyStore().path))


@keys.command("delete")
@click.argument("provider")
def delete_key(provider: str) -> None:
    """Forget the stored key for PROVIDER."""
    from limner.config import KeyStore

    removed = KeyStore().delete(provider)
    click.echo(f"Deleted the key for {provider}." if removed else f"No stored key for {provider}.")
