from __future__ import annotations

import httpx
import pytest

from limner import errors
from limner.fetch import SafeFetcher, check_address
from limner.http import RetryPolicy, build_request, map_http_error, parse_retry_after


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "phare à l'aube ☀", "n": 2, "guidance": 3.5, "tags": [], "style": None},
        {"seed": 2**70, "prompt": "wider than 64 bits"},  # orjson refuses: the slow path
    ],
)
def test_build_request_sends_what_httpx_sends(body: dict[str, object]) -> None:
    url = "https://api.example.com/v1/images/generations?api-version=2"
    headers = {"Authorization": "Bearer sk-test"}
    ours = build_request("POST", url, json=body, headers=headers, params={"x": "1"})
    theirs = httpx.Request("POST", url, json=body, headers=headers, params={"x": "1"})
    assert ours.read() == theirs.read()
    assert ours.url == theirs.url
    assert dict(ours.headers) == dict(theirs.headers)
    # The parsed URL is shared between requests; a request's own parameters never leak into it.
    again = build_request("POST", url, json=body, headers=headers)
    assert str(again.url) == url


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert parse_retry_after(httpx.Headers({"retry-after": "3"})) == 3.0
    date = "Wed, 21 Oct 2015 07:28:10 GMT"
    assert parse_retry_after(httpx.Headers({"retry-after": date}), now=1445412480.0) == 10.0
    assert parse_retry_after(httpx.Headers({})) is None


@pytest.mark.parametrize(
    ("status", "headers", "retry"),
    [(429, {}, True), (500, {}, True), (400, {}, False), (400, {"x-should-retry": "true"}, True),
     (503, {"x-should-retry": "false"}, False), (429, {"retry-after": "600"}, False)],
)  # fmt: skip
def test_retry_classification(status: int, headers: dict[str, str], retry: bool) -> None:
    response = httpx.Response(status, headers=headers)
    assert (RetryPolicy().classify(response) is not None) is retry


def test_backoff_is_bounded_with_negative_jitter() -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=8)
    for attempt in range(1, 10):
        delay = policy.backoff(attempt)
        cap = min(0.5 * 2 ** (attempt - 1), 8)
        assert 0.75 * cap <= delay <= cap


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, errors.AuthenticationError), (402, errors.InsufficientCreditsError), (429, errors.RateLimitError),
     (503, errors.ProviderUnavailableError), (504, errors.ProviderTimeoutError), (422, errors.ProviderRejectedError)],
)  # fmt: skip
def test_status_mapping(status: int, error: type[Exception]) -> None:
    assert isinstance(map_http_error("p", httpx.Response(status), "boom"), error)


@pytest.mark.parametrize(
    "ip",
    ["127.0.0.1", "10.0.0.1", "192.168.1.1", "172.16.0.1", "169.254.169.254", "::1", "fe80::1",
     "::ffff:127.0.0.1", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "0.0.0.0", "224.0.0.1"],
)  # fmt: skip
def test_fetcher_refuses_internal_addresses(ip: str) -> None:
    assert check_address(ip) is not None


def test_fetcher_allows_public_and_opt_in_loopback() -> None:
    assert check_address("93.184.216.34") is None
    assert check_address("127.0.0.1", allow_loopback=True) is None


def test_fetcher_refuses_http_and_loopback_by_default() -> None:
    fetcher = SafeFetcher()
    with httpx.Client() as client:
        with pytest.raises(errors.InputImageError, match="https is required"):
            fetcher.fetch(client, "http://example.com/x.png")
        with pytest.raises(errors.InputImageError, match="loopback"):
            fetcher.fetch(client, "https://127.0.0.1/x.png")
        with pytest.raises(errors.InputImageError, match="only http"):
            fetcher.fetch(client, "file:///etc/passwd")


def test_fetcher_caps_size_and_rechecks_redirects(openai_env) -> None:
    server, _ = openai_env
    big = SafeFetcher(allow_loopback=True, max_bytes=10)
    with httpx.Client() as client:
        result = httpx.post(server.url + "/v1/images/generations", json={"model": "dall-e-2", "prompt": "x", "size": "256x256"},
                            headers={"authorization": "Bearer k"}).json()  # fmt: skip
        url = result["data"][0]["url"]
        with pytest.raises(errors.InputImageError, match="exceeds"):
            big.fetch(client, url)
        assert SafeFetcher(allow_loopback=True).fetch(client, url).media_type == "image/png"
        with pytest.raises(errors.ProviderUnavailableError, match="expired"):
            SafeFetcher(allow_loopback=True).fetch(client, server.url + "/delivery/nope")
