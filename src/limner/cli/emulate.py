"""``limner emulate PROVIDER`` and ``limner demo``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("provider")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless told)."
)
@click.option("--port", type=int, default=0, help="Port (default: a free one).")
@click.option("--latency", type=float, default=0.0, help="Seconds added to each API call.")
def emulate(provider: str, host: str, port: int, latency: float) -> None:
    """Serve PROVIDER's API emulator for offline tests. Ctrl-C stops it."""
    import socket

    import uvicorn

    from limner.config import base_url_env_name
    from limner.emulators import base_url, create_app

    app = create_app(provider)
    app.state.emulator.latency = latency
    if not port:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
    url = base_url(provider, f"http://{host}:{port}")
    click.echo(f"{provider} emulator on {url}", err=True)
    click.echo(f"export {base_url_env_name(provider)}={url}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@click.command()
@click.argument("prompt", default="a lighthouse on a cliff at dawn, watercolor")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("limner-demo"),
    show_default=True,
)
def demo(prompt: str, output: Path) -> None:
    """Generate PROMPT end to end (validate, call, store, log, save) against the bundled
    OpenAI emulator on loopback: no key or network needed."""
    from limner.client import Limner
    from limner.emulators import base_url, create_app
    from limner.emulators.common import EmulatorServer
    from limner.types import ImageRequest, Operation

    with EmulatorServer(create_app("openai")) as server:
        url = base_url("openai", server.url)
        with Limner(keys={"openai": "sk-demo"}, base_urls={"openai": url}) as client:
            request = ImageRequest(
                prompt=prompt, model="openai:gpt-image-2", size="1024x1024", quality="medium", n=2
            )
            result = client.run(Operation.GENERATE, request)
    for i, image in enumerate(result.images):
        path = image.save(output / f"demo-{i}.png")
        click.echo(str(path))
    click.echo(f"{len(result.images)} images from {result.model} (emulated), cost ${result.cost_usd:.4f}, "
               f"logged as {result.generation_id}. See `limner logs`.", err=True)  # fmt: skip
