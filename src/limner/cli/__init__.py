"""The ``limner`` command. Commands live in their own modules and load only when run, so
``limner --help`` imports neither httpx nor any heavy library.

Exit codes: 0 ok, 1 provider or runtime failure, 2 bad input.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

__all__ = ["COMMANDS", "main"]

# name -> (module:attribute, one-line help). Add a command here and in its own module.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("limner.cli.generate:generate", "Make images from a prompt."),
    "edit": ("limner.cli.generate:edit", "Edit an image (with a mask: inpaint)."),
    "variations": ("limner.cli.generate:variations", "Make variations of an image."),
    "models": ("limner.cli.models:models", "List, inspect and compare models."),
    "prompt": ("limner.cli.prompt:prompt", "Build, translate, expand and lint prompts."),
    "recommend": ("limner.cli.recommend:recommend", "Rank models for a prompt or use case."),
    "cost": ("limner.cli.cost:cost", "Estimate, report and plan what images cost."),
    "budget": ("limner.cli.cost:budget", "Show or set daily and monthly spending caps."),
    "keys": ("limner.cli.keys:keys", "Manage provider API keys."),
    "logs": ("limner.cli.logs:logs", "List and search the generation log."),
    "export": ("limner.cli.export:export", "Export manifests and projects."),
    "emulate": ("limner.cli.emulate:emulate", "Serve a provider's API emulator on loopback."),
    "serve": (
        "limner.cli.serve:serve",
        "Serve the OpenAI/A1111-compatible APIs, jobs and gallery.",
    ),
    "server-keys": ("limner.cli.serve:server_keys", "Manage the server's API keys."),
    "mcp": ("limner.cli.serve:mcp", "Serve limner's tools to AI assistants over MCP (stdio)."),
    "rerun": ("limner.cli.local:rerun", "Run a logged generation again from its parameters."),
    "demo": (
        "limner.cli.emulate:demo",
        "Generate an image end to end against the bundled emulator.",
    ),
    "batch": ("limner.cli.batch:batch", "Run a file of requests: resumable, rate-limited."),
    "ab": ("limner.cli.batch:ab", "A/B test prompt variants across models and seeds."),
    "grid": ("limner.cli.batch:grid", "An X/Y/Z grid over any parameters, with a contact sheet."),
    "upscale": ("limner.cli.ops:upscale", "Upscale an image (learned, OpenCV, Lanczos, cloud)."),
    "remove-bg": ("limner.cli.ops:remove_bg", "Remove a background (ONNX, GrabCut, cloud)."),
    "mask": ("limner.cli.ops:mask", "Make an inpainting mask (shape, colour, subject...)."),
    "outpaint": ("limner.cli.ops:outpaint", "Extend an image beyond its borders."),
    "check": ("limner.cli.ops:check", "Check size, blur, exposure, text, duplicates."),
    "provenance": ("limner.cli.ops:provenance", "Read, verify, sign or strip image provenance."),
    "describe": (
        "limner.cli.describe:describe",
        "Suggest prompts for an image (Ideogram, Midjourney).",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, _, attr = COMMANDS[name][0].partition(":")
        command: click.Command = getattr(importlib.import_module(module_name), attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        from limner.cli._errors import run_with_errors

        return run_with_errors(lambda: super(LazyGroup, self).invoke(ctx))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="limner")
def cli() -> None:
    """limner: image generation across providers and a local diffusers engine."""


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="limner", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
