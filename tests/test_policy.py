"""Usage policy through the real client against the OpenAI emulator."""

from __future__ import annotations

import httpx
import pytest

from limner import Limner
from limner.catalog import get_catalog
from limner.config import UserConfig
from limner.emulators.common import BLOCKED_WORD
from limner.errors import UsagePolicyError, UserError
from limner.policy import PolicyGuard, check_licence
from limner.store import Store
from limner.types import ImageRequest


def _request(prompt: str = "a quiet harbour", **extra: object) -> ImageRequest:
    return ImageRequest(prompt=prompt, model="openai:dall-e-2", size="256x256", **extra)


def _sent(server) -> int:
    return httpx.get(server.url + "/_emulator/stats").json().get("POST /v1/images/generations", 0)


def _statuses(home) -> list[tuple[str, str | None]]:
    store = Store(home)
    try:
        return [(e.status, e.error_type) for e in store.search(limit=None)]
    finally:
        store.close()


def test_deny_list_refuses_before_sending_and_logs_refused(openai_env, tmp_path):
    server, _ = openai_env
    UserConfig(tmp_path).set("policy", {"deny": ["harpoon", "re:sub(marine|way)"]})
    with Limner(home=tmp_path) as client:
        with pytest.raises(UsagePolicyError, match="'harpoon' on the deny list"):
            client.run("generate", _request("a whaler with a HARPOON"))
        with pytest.raises(UsagePolicyError, match="deny list"):
            client.run("generate", _request("a yellow submarine"))
        client.run("generate", _request("harpoons are fine as a plural"))
    assert _sent(server) == 1
    assert _statuses(tmp_path).count(("refused", "UsagePolicyError")) == 2


def test_commercial_only_refuses_non_commercial_models(openai_env, tmp_path, monkeypatch):
    server, _ = openai_env
    spec = get_catalog().resolve("openai:dall-e-2")
    restricted = spec.model_copy(update={"commercial_use": False, "licence": "research only"})
    catalog = get_catalog([restricted])
    monkeypatch.setenv("LIMNER_COMMERCIAL_ONLY", "1")
    with (
        Limner(home=tmp_path, catalog=catalog) as client,
        pytest.raises(UsagePolicyError, match="research only"),
    ):
        client.run("generate", _request())
    assert _sent(server) == 0
    assert _statuses(tmp_path) == [("refused", "UsagePolicyError")]


def test_check_licence_names_the_licence():
    spec = (
        get_catalog()
        .resolve("openai:gpt-image-2")
        .model_copy(update={"commercial_use": False, "licence": "FLUX.1 [dev] Non-Commercial"})
    )
    with pytest.raises(UsagePolicyError, match="Non-Commercial"):
        check_licence(spec, commercial=True)
    check_licence(spec, commercial=False)


def test_policy_hook_callable(openai_env, tmp_path):
    server, _ = openai_env
    seen: list[str] = []

    def no_celebrities(request: ImageRequest, spec: object) -> str | None:
        seen.append(request.prompt)
        return "real people need consent" if "celebrity" in request.prompt else None

    with Limner(home=tmp_path) as client:
        client.guards = [PolicyGuard(client, hooks=[no_celebrities]), *client.guards]
        with pytest.raises(UsagePolicyError, match="real people need consent"):
            client.run("generate", _request("a celebrity at the beach"))
        client.run("generate", _request("a dog at the beach"))
    assert seen == ["a celebrity at the beach", "a dog at the beach"]
    assert _sent(server) == 1


def test_policy_hook_from_config(openai_env, tmp_path, monkeypatch):
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    (hooks_dir / "house_rules.py").write_text(
        "def refuse_red(request, spec):\n"
        "    return 'no red today' if 'red' in request.prompt.split() else None\n"
    )
    monkeypatch.syspath_prepend(str(hooks_dir))
    UserConfig(tmp_path).set("policy", {"hooks": ["house_rules:refuse_red"]})
    with Limner(home=tmp_path) as client:
        with pytest.raises(UsagePolicyError, match="no red today"):
            client.run("generate", _request("a red kite"))
        client.run("generate", _request("a blue kite"))
        UserConfig(tmp_path).set("policy", {"hooks": ["house_rules:missing"]})
        with pytest.raises(UserError, match="cannot be loaded"):
            client.run("generate", _request("a blue kite"))


def test_moderation_endpoint_flags_and_is_never_followed_by_a_send(openai_env, tmp_path):
    server, _ = openai_env
    UserConfig(tmp_path).set("policy", {"moderation": True})
    with Limner(home=tmp_path) as client:
        with pytest.raises(UsagePolicyError, match="moderation check flagged the prompt: violence"):
            client.run("generate", _request(f"a scene with {BLOCKED_WORD}"))
        client.run("generate", _request("a calm lake"))
    stats = httpx.get(server.url + "/_emulator/stats").json()
    assert stats["POST /v1/moderations"] == 2
    assert stats["POST /v1/images/generations"] == 1
    assert ("refused", "UsagePolicyError") in _statuses(tmp_path)


def test_moderation_route_shape(openai_env):
    _, url = openai_env
    headers = {"Authorization": "Bearer sk-test"}
    body = httpx.post(
        url + "/moderations", json={"input": ["fine", f"x {BLOCKED_WORD}"]}, headers=headers
    ).json()
    assert [r["flagged"] for r in body["results"]] == [False, True]
    assert body["results"][1]["categories"]["violence"] is True
    assert httpx.post(url + "/moderations", json={"input": "x"}).status_code == 401
    assert httpx.post(url + "/moderations", json={}, headers=headers).status_code == 400


async def test_async_run_is_guarded_too(openai_env, tmp_path):
    server, _ = openai_env
    UserConfig(tmp_path).set("policy", {"deny": ["harpoon"]})
    with Limner(home=tmp_path) as client, pytest.raises(UsagePolicyError):
        await client.arun("generate", _request("harpoon"))
    assert _sent(server) == 0


def test_commercial_flag_on_generate_refuses_non_commercial_licences(openai_env, tmp_path):
    from click.testing import CliRunner

    from limner.cli import cli

    # FLUX.1 [dev] on the local engine is non-commercial; the refusal comes before any loading.
    result = CliRunner().invoke(
        cli, ["generate", "a fox", "-m", "local:flux.1-dev", "--commercial", "-o", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "may not be used commercially" in result.stderr
    import limner

    with pytest.raises(UsagePolicyError):
        limner.generate("a fox", model="local:flux.1-dev", commercial=True)
