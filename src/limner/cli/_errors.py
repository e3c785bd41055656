"""Where every limner error becomes a message and an exit code, once for the whole CLI."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from limner.errors import LimnerError


def fail(exc: LimnerError) -> NoReturn:
    if os.environ.get("LIMNER_JSON_ERRORS") == "1":
        click.echo(json.dumps({"error": exc.to_dict()}), err=True)
    else:
        click.secho(f"Error: {exc.message}", fg="red", err=True)
        if exc.hint:
            click.echo(exc.hint, err=True)
    sys.exit(exc.exit_code)


def run_with_errors(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except LimnerError as exc:
        fail(exc)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
        raise
    except Exception as exc:
        if os.environ.get("LIMNER_DEBUG"):
            raise
        click.secho(f"Error: unexpected {type(exc).__name__}: {exc}", fg="red", err=True)
        click.echo("Run with LIMNER_DEBUG=1 for the traceback, and please report it.", err=True)
        sys.exit(1)
