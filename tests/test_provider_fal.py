"""fal.ai: limner's adapter, and the official ``fal-client`` SDK, against the emulator."""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from limner import errors
from limner.client import Limner
from limner.emulators import create_app
from limner.emulators.common import BLOCKED_WORD, EmulatorServer
from limner.images import load_image
from limner.types import ImageRequest, Operation, ReferenceImage

FAST = {"poll_interval": 0.01, "poll_max_interval": 0.02}
Emulator = Callable[[str], tuple[EmulatorServer, str]]
Env = tuple[Limner, EmulatorServer, str]


@pytest.fixture
def fal(emulator: Emulator) -> Iterator[Env]:
    server, url = emulator("fal")
    client = Limner(keys={"fal": "fal-key-id:secret"}, base_urls={"fal": url})
    yield client, server, url
    client.close()


def _png(width: int, height: int, colour: tuple[int, int, int] = (90, 30, 160)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


def _stats(server: EmulatorServer) -> dict[str, int]:
    return httpx.get(server.url + "/_emulator/stats").json()


def _request(model: str, **kw: object) -> ImageRequest:
    options = {**FAST, **kw.pop("provider_options", {})}  # type: ignore[dict-item]
    return ImageRequest(model=model, provider_options=options, **kw)  # type: ignore[arg-type]


def test_queue_submit_status_result(fal: Env) -> None:
    client, server, _ = fal
    messages: list[str] = []
    client.on_progress = lambda _f, m: messages.append(m)
    result = client.run(
        Operation.GENERATE,
        _request("fal-ai/flux/schnell", prompt="a fox", size="256x192", n=2, seed=3),
    )
    assert [(i.width, i.height) for i in result.images] == [(256, 192)] * 2
    assert [i.seed for i in result.images] == [3, 4]
    stats = _stats(server)
    assert stats["POST /queue/fal-ai/flux/schnell"] == 1
    rid = result.request_id
    # Status: IN_QUEUE (202), IN_PROGRESS (202), COMPLETED (200) on the truncated app path.
    assert stats[f"GET /queue/fal-ai/flux/requests/{rid}/status"] == 3
    assert stats[f"GET /queue/fal-ai/flux/requests/{rid}"] == 1
    assert any(m.startswith("queued") for m in messages) and any(
        m.startswith("running") for m in messages
    )
    # Per-megapixel price: 2 images of 0.05 MP, each billed at least one megapixel.
    assert result.cost_usd == pytest.approx(0.006)
    entry = client.store.get(result.generation_id or "")
    assert entry is not None and entry.cost_usd == pytest.approx(0.006)


def test_subpath_endpoint_uses_urls_from_submit(fal: Env) -> None:
    client, server, _ = fal
    image = load_image(_png(64, 48))
    request = _request("fal-ai/flux/dev", prompt="oil painting", images=[image], strength=0.6)
    native = client.provider("fal").native_request(
        Operation.EDIT, request, client.resolve(request.model)
    )
    assert native["url"].endswith("/queue/fal-ai/flux/dev/image-to-image")
    assert native["json"]["strength"] == 0.6 and native["json"]["image_url"].startswith("<data URL")
    result = client.run(Operation.EDIT, request)
    assert (result.images[0].width, result.images[0].height) == (64, 48)
    assert f"GET /queue/fal-ai/flux/requests/{result.request_id}" in _stats(server)


def test_sync_mode_is_one_request(fal: Env) -> None:
    client, server, _ = fal
    request = _request(
        "fal-ai/flux/schnell",
        prompt="a cup",
        aspect_ratio="16:9",
        provider_options={"mode": "sync", "sync_mode": True},
    )
    result = client.run(Operation.GENERATE, request)
    assert (result.images[0].width, result.images[0].height) == (1024, 576)
    stats = _stats(server)
    assert stats["total"] == 1 and stats["POST /run/fal-ai/flux/schnell"] == 1


def test_operations_map_to_endpoints(fal: Env) -> None:
    client, server, _ = fal
    image = load_image(_png(64, 64))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    client.run(
        Operation.INPAINT,
        _request(
            "fal-ai/flux-pro/v1/fill",
            prompt="a star",
            images=[image],
            mask=load_image(buf.getvalue()),
        ),
    )
    client.run(
        Operation.CONTROLNET,
        _request("fal-ai/flux-pro/v1/canny", prompt="a city", images=[image], size="256x256"),
    )
    client.run(
        Operation.VARIATION, _request("fal-ai/flux-pro/v1.1/redux", images=[image], size="256x256")
    )
    ref = ReferenceImage(image=image, kind="character")
    client.run(
        Operation.GENERATE,
        _request(
            "fal-ai/nano-banana-pro",
            prompt="the same cat, skiing",
            references=[ref],
            aspect_ratio="4:3",
        ),
    )
    stats = _stats(server)
    for path in (
        "fal-ai/flux-pro/v1/fill",
        "fal-ai/flux-pro/v1/canny",
        "fal-ai/flux-pro/v1.1/redux",
        "fal-ai/nano-banana-pro/edit",
    ):
        assert stats[f"POST /queue/{path}"] == 1


def test_deadline_cancels_the_queued_request(fal: Env) -> None:
    client, server, _ = fal
    httpx.post(server.url + "/_emulator/jobs", json={"queue_polls": 1000})
    with pytest.raises(errors.ProviderTimeoutError):
        client.run(
            Operation.GENERATE,
            _request(
                "fal-ai/flux/schnell",
                prompt="x",
                size="64x64",
                provider_options={"deadline_s": 0.1},
            ),
        )
    stats = _stats(server)
    assert stats["cancelled"] == 1
    assert sum(v for k, v in stats.items() if k.startswith("PUT /queue/fal-ai/flux/requests/")) == 1


def test_nsfw_flagged_images_are_a_policy_error(fal: Env) -> None:
    client, _, _ = fal
    with pytest.raises(errors.ContentPolicyError, match="safety checker"):
        client.run(
            Operation.GENERATE,
            _request("fal-ai/flux/schnell", prompt=f"a {BLOCKED_WORD}", size="64x64"),
        )


def test_429_retry_and_queue_limit(fal: Env) -> None:
    client, server, url = fal
    httpx.post(
        server.url + "/_emulator/faults",
        json={"status": 429, "retry_after": 0, "count": 1, "path": "/queue/fal-ai/flux/schnell"},
    )
    assert client.run(
        Operation.GENERATE, _request("fal-ai/flux/schnell", prompt="x", size="64x64")
    ).images
    assert _stats(server)["POST /queue/fal-ai/flux/schnell"] == 2
    httpx.post(server.url + "/_emulator/jobs", json={"max_in_flight": 0})
    response = httpx.post(
        url + "/fal-ai/flux/schnell", json={"prompt": "x"}, headers={"Authorization": "Key k"}
    )
    assert response.status_code == 429


def test_401_422_and_exhausted_balance_are_mapped(fal: Env) -> None:
    client, server, url = fal
    with pytest.raises(errors.ProviderRejectedError, match="image_size"):
        client.run(
            Operation.GENERATE,
            _request("fal-ai/flux/schnell", prompt="x", provider_options={"image_size": "huge"}),
        )
    body = {
        "detail": "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."
    }
    httpx.post(server.url + "/_emulator/faults", json={"status": 403, "count": 1, "body": body})
    with pytest.raises(errors.InsufficientCreditsError, match="Exhausted balance"):
        client.run(Operation.GENERATE, _request("fal-ai/flux/schnell", prompt="x", size="64x64"))
    # No key: the emulator answers 401, which maps to AuthenticationError.
    response = httpx.post(url + "/fal-ai/flux/schnell", json={"prompt": "x"})
    assert response.status_code == 401
    from limner.providers.fal import FalProvider

    assert isinstance(FalProvider()._error(response, None), errors.AuthenticationError)


async def test_async_queue_flow(fal: Env) -> None:
    client, _, _ = fal
    result = await client.arun(
        Operation.GENERATE, _request("fal-ai/flux-2-pro", prompt="a kite", size="128x128")
    )
    assert result.images[0].width == 128 and result.cost_usd == pytest.approx(0.03)


# -- the official SDK, unchanged but for its hosts (fal-client speaks https only) -------------
def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_fal(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    import uvicorn

    cert, key = _self_signed(tmp_path)
    server = EmulatorServer(create_app("fal"))
    config = uvicorn.Config(
        server.app,
        host=server.host,
        port=server.port,
        log_level="warning",
        lifespan="off",
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    server.server = uvicorn.Server(config)
    server.thread = threading.Thread(target=server.server.run, daemon=True)
    server.start()
    yield f"{server.host}:{server.port}", cert
    server.stop()


SDK_SCRIPT = textwrap.dedent(
    """
    import io, json, fal_client, httpx
    from PIL import Image

    updates = []
    result = fal_client.subscribe(
        "fal-ai/flux/dev/image-to-image",
        arguments={"prompt": "a lighthouse", "image_url": IMAGE, "strength": 0.5, "num_images": 2},
        with_logs=True,
        on_queue_update=lambda status: updates.append(type(status).__name__),
    )
    first = Image.open(io.BytesIO(httpx.get(result["images"][0]["url"]).content))
    sync = fal_client.run("fal-ai/flux/schnell", arguments={"prompt": "x", "image_size": "square", "sync_mode": True})
    handle = fal_client.submit("fal-ai/flux/schnell", arguments={"prompt": "y", "image_size": "square"})
    handle.cancel()
    print(json.dumps({
        "count": len(result["images"]), "size": first.size, "updates": sorted(set(updates)),
        "sync_url": sync["images"][0]["url"][:22], "cancelled_status": type(handle.status()).__name__,
    }))
    """
)


def test_official_sdk_drives_the_emulator(tls_fal: tuple[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("fal_client")
    host, cert = tls_fal
    image = "data:image/png;base64," + __import__("base64").b64encode(_png(48, 32)).decode()
    script = tmp_path / "sdk.py"
    script.write_text(f"IMAGE = {image!r}\n" + SDK_SCRIPT)
    env = {
        **os.environ,
        "FAL_KEY": "sdk-key",
        "FAL_RUN_HOST": f"{host}/run",
        "FAL_QUEUE_RUN_HOST": f"{host}/queue",
        "SSL_CERT_FILE": str(cert),
    }
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["count"] == 2 and report["size"] == [48, 32]
    assert "Completed" in report["updates"] and "InProgress" in report["updates"]
    assert report["sync_url"] == "data:image/jpeg;base64"
    assert report["cancelled_status"] == "Completed"
