"""The ASGI guards and API keys, in process (httpx's ASGI transport): which port serves what, keys compared and
re-read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.api.auth import RELOAD_CHECK_S, ApiKeyAuth, ApiKeys, allowed_models, parse_keys
from gateway.api.guards import PortSplit
from gateway.errors import ConfigError
from gateway.queue.budget import Quota

pytestmark = pytest.mark.unit


async def _echo_grant(request: Request) -> JSONResponse:
    grant = allowed_models(request.scope)
    return JSONResponse({"models": None if grant.models is None else sorted(grant.models)})


def _app(keys: ApiKeys | None = None, metrics_port: int | None = None) -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/v1/models", _echo_grant), Route("/metrics", _echo_grant)])
    wrapped = PortSplit(ApiKeyAuth(app, keys) if keys else app, metrics_port)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped))


async def test_with_a_metrics_port_each_port_serves_only_its_own_paths() -> None:
    async with _app(metrics_port=9090) as client:
        assert (await client.get("http://gw:8080/v1/models")).status_code == 200
        assert (await client.get("http://gw:8080/metrics")).status_code == 404
        assert (await client.get("http://gw:9090/metrics")).status_code == 200
        assert (await client.get("http://gw:9090/v1/models")).status_code == 404
    async with _app() as client:
        assert (await client.get("http://gw:8080/metrics")).status_code == 200


async def test_keys_grant_models(tmp_path: Path) -> None:
    keys = ApiKeys(parse_keys("sk-everything-1", "env"))
    async with _app(keys) as client:
        ok = await client.get("http://gw/v1/models", headers={"authorization": "Bearer sk-everything-1"})
        assert ok.json() == {"models": None}
        refused = await client.get("http://gw/v1/models", headers={"authorization": "Basic sk-everything-1"})
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert (await client.get("http://gw/metrics")).status_code == 200  # not an API route


def test_key_file_format_and_errors(tmp_path: Path) -> None:
    parsed = parse_keys("# comment\nsk-aaaaaaaa a,b  # trailing comment\n\nsk-bbbbbbbb\n", "f")
    assert parsed["sk-aaaaaaaa"].models == frozenset({"a", "b"}) and parsed["sk-bbbbbbbb"].models is None
    with pytest.raises(ConfigError, match="line 1") as info:
        parse_keys("short\n", "f")
    assert "short" not in str(info.value)  # a key is never echoed
    assert ApiKeys.configured((), None) is None


def test_key_file_names_and_quotas(tmp_path: Path) -> None:
    line = "sk-aaaaaaaa a, b name=team-a max-requests=4 max-entries=16 max-queued-bytes=2MiB\nsk-bbbbbbbb\n"
    parsed = parse_keys(line, "f")
    team_a, other = parsed["sk-aaaaaaaa"], parsed["sk-bbbbbbbb"]
    assert team_a.models == frozenset({"a", "b"}) and team_a.label == "team-a"
    assert team_a.quota == Quota(max_requests=4, max_entries=16, max_bytes=2 << 20)
    assert other.quota == Quota() and other.label.startswith("key-") and "sk-bbbb" not in other.label
    assert other.account and other.account != team_a.account and "sk-" not in other.account
    for wrong in ("max-request=4", "max-requests=0", "max-queued-bytes=lots"):
        with pytest.raises(ConfigError, match="line 1") as info:
            parse_keys(f"sk-aaaaaaaa {wrong}\n", "f")
        assert "sk-aaaaaaaa" not in str(info.value)


def test_a_changed_key_file_is_reloaded_at_most_once_a_second_and_a_broken_one_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("sk-first-key\n")
    clock = [1000.0]
    keys = ApiKeys({}, path, clock=lambda: clock[0])
    assert keys.lookup("sk-first-key") is not None
    clock[0] += 1
    path.write_text("sk-second-key\n")
    os.utime(path, ns=(1, 1))
    assert keys.lookup("sk-second-key") is not None  # first look after the change
    clock[0] += 0.5
    path.write_text("bad\n")
    os.utime(path, ns=(2, 2))
    assert keys.lookup("sk-second-key") is not None  # not looked at again within a second
    clock[0] += 1
    assert keys.lookup("sk-second-key") is None  # looked at, broken: the file's keys are revoked (fail closed)
    assert keys.lookup("sk-first-key") is None


def test_the_key_file_is_looked_at_once_per_check_interval_however_many_lookups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys"
    path.write_text("sk-first-key\n")
    clock = [1000.0]
    keys = ApiKeys({}, path, clock=lambda: clock[0])
    looks: list[Path] = []
    real_stat = Path.stat

    def counted_stat(self: Path, **kwargs: Any) -> os.stat_result:
        if self == path:
            looks.append(self)
        return real_stat(self, **kwargs)

    monkeypatch.setattr(Path, "stat", counted_stat)
    for _ in range(100):
        assert keys.lookup("sk-first-key") is not None
    assert len(looks) == 1  # the first lookup looked; the other 99 within the same second did not
    clock[0] += RELOAD_CHECK_S
    for _ in range(100):
        keys.lookup("sk-first-key")
    assert len(looks) == 2
