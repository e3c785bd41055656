"""The emulators' ``noise`` setting: photo-sized result files, for benchmarks with realistic bodies."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
from PIL import Image

from limner.emulators.common import render_image


def generate(url: str, size: str) -> bytes:
    response = httpx.post(
        url + "/images/generations",
        json={"model": "gpt-image-2", "prompt": "a grainy harbour", "size": size},
        headers={"authorization": "Bearer sk-test"},
    )
    response.raise_for_status()
    return base64.b64decode(response.json()["data"][0]["b64_json"])


def test_noise_setting_makes_large_decodable_images(openai_env: Any) -> None:
    server, url = openai_env
    plain = generate(url, "512x512")
    settings = httpx.post(server.url + "/_emulator/settings", json={"noise": 3}).json()
    assert settings["noise"] == 3
    noisy = generate(url, "512x512")
    image = Image.open(io.BytesIO(noisy))
    image.load()
    assert image.size == (512, 512)
    # 3 bits of noise per channel on 512x512x3 bytes: about 3/8 of the raw pixels survive zlib.
    assert len(noisy) > 250_000 > 50 * len(plain)
    httpx.post(server.url + "/_emulator/settings", json={"noise": 0})
    assert generate(url, "512x512") == plain


def test_noisy_render_is_deterministic_and_differs_by_prompt() -> None:
    first = render_image("a", 1, 64, 64, "png", noise=4)
    assert render_image.__wrapped__("a", 1, 64, 64, "png", noise=4) == first  # not the cache
    assert render_image("b", 1, 64, 64, "png", noise=4) != first
    assert render_image("a", 1, 64, 64, "png") != first
