"""The gateway's own hardening, as pure logic: what a runtime child inherits, what a log line shows of a URL, when
an open API may start, and a key-file reload that fails closed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.api.auth import ALL_MODELS, ApiKeys, Grant
from gateway.backends.local.runtimes import RuntimeEnvironment
from gateway.errors import ConfigError
from gateway.processes import child_environment, redact
from gateway.replicas.client import runtime_headers
from gateway.settings import GatewaySettings, ServerSettings

pytestmark = [pytest.mark.unit, pytest.mark.security]

PARENT = {
    "PATH": "/usr/bin",
    "HOME": "/home/k",
    "PYTHONPATH": "/src",
    "HF_TOKEN": "hf_abc",
    "CUDA_VISIBLE_DEVICES": "0",
    "LC_ALL": "C.UTF-8",
    "KALTSTART_RUNTIME_WEIGHT_READ_THREADS": "8",
    "KALTSTART_API_KEYS": "sk-secret-0123456789",
    "KALTSTART_API_KEYS_FILE": "/etc/keys",
    "KALTSTART_RUNTIME_TOKEN": "operator-token-0123456789",
    "REDIS_URL": "redis://:pw@redis:6379/0",
    "AWS_SECRET_ACCESS_KEY": "aws",
    "KUBECONFIG": "/root/.kube/config",
}


def test_a_runtime_child_inherits_an_allow_list_only() -> None:
    env = RuntimeEnvironment(announce_to="redis://:pw@127.0.0.1:1/0", token="gateway-token-0123456789")
    child = env.environ(PARENT)
    assert not any(name.startswith("KALTSTART_API_KEYS") for name in child)
    assert {"REDIS_URL", "AWS_SECRET_ACCESS_KEY", "KUBECONFIG"}.isdisjoint(child)
    for kept in ("PATH", "HOME", "PYTHONPATH", "HF_TOKEN", "CUDA_VISIBLE_DEVICES", "LC_ALL"):
        assert child[kept] == PARENT[kept]
    assert child["KALTSTART_RUNTIME_WEIGHT_READ_THREADS"] == "8"  # the runtime's own settings pass
    assert child["KALTSTART_RUNTIME_TOKEN"] == "gateway-token-0123456789"  # ours, not the operator's
    assert child["KALTSTART_RUNTIME_ANNOUNCE_TO"] == "redis://:pw@127.0.0.1:1/0"
    assert child["PYTHONUNBUFFERED"] == "1"
    unset = RuntimeEnvironment().environ(PARENT)
    assert (unset["KALTSTART_RUNTIME_TOKEN"], unset["KALTSTART_RUNTIME_ANNOUNCE_TO"]) == ("", "")
    assert child_environment({"KALTSTART_API_KEYS_FILE": "x"}, {}) == {"PYTHONUNBUFFERED": "1"}


def test_logged_urls_lose_their_password() -> None:
    line = "python -m runtime --announce-to redis://:s3cr3t@127.0.0.1:6379/0 --x rediss://user:p%40ss@h:1/2"
    shown = redact(line)
    assert "s3cr3t" not in shown and "p%40ss" not in shown
    assert "redis://:***@127.0.0.1:6379/0" in shown and "rediss://user:***@h:1/2" in shown
    assert redact("http://127.0.0.1:8000/readyz") == "http://127.0.0.1:8000/readyz"


def test_the_runtime_token_is_one_header_and_never_shown() -> None:
    assert runtime_headers("gateway-token-0123456789") == {"authorization": "Bearer gateway-token-0123456789"}
    assert runtime_headers(None) == {}
    settings = ServerSettings(runtime_token="gateway-token-0123456789")
    assert "gateway-token-0123456789" not in repr(settings)
    with pytest.raises(ConfigError, match="16 characters"):
        ServerSettings(runtime_token="short")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "gateway.example"])
def test_no_open_api_on_an_address_other_than_loopback(host: str) -> None:
    with pytest.raises(ConfigError, match="KALTSTART_ALLOW_ANONYMOUS") as refused:
        GatewaySettings.from_env({"KALTSTART_HOST": host})
    assert refused.value.key == "KALTSTART_HOST"
    for allowed in (
        {"KALTSTART_API_KEYS": "sk-0123456789"},
        {"KALTSTART_API_KEYS_FILE": "/etc/keys"},
        {"KALTSTART_ALLOW_ANONYMOUS": "true"},
    ):
        GatewaySettings.from_env({"KALTSTART_HOST": host, **allowed})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_keys(host: str) -> None:
    assert GatewaySettings.from_env({"KALTSTART_HOST": host}).server.host == host


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += 2.0  # past the reload check's period


@pytest.mark.parametrize(
    "break_it",
    [
        lambda path: path.write_text("sk-team-b-0000000\nshort\n"),  # a typo on another line
        lambda path: path.unlink(),  # unreadable
        lambda path: path.write_bytes(b"\xff\xfe not text"),
    ],
    ids=["unparsable", "missing", "not-utf8"],
)
def test_a_failed_reload_revokes_the_file_s_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, break_it: Callable[[Path], object]
) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text("sk-team-a-0000000\nsk-team-b-0000000\n")
    clock = Clock()
    keys = ApiKeys({"sk-fixed-00000000": ALL_MODELS}, keys_file, clock)
    assert _every_model(keys.lookup("sk-team-a-0000000"))
    break_it(keys_file)
    clock.tick()
    with caplog.at_level(logging.ERROR, logger="kaltstart.auth"):
        assert keys.lookup("sk-team-a-0000000") is None  # the old keys stay no longer
        assert keys.lookup("sk-team-b-0000000") is None
        clock.tick()
        assert keys.lookup("sk-team-b-0000000") is None
    assert _every_model(keys.lookup("sk-fixed-00000000"))  # KALTSTART_API_KEYS are not the file's
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "revoked" in errors[0].getMessage()  # once, not at every check
    assert "sk-team" not in caplog.text
    keys_file.write_text("sk-team-b-0000000\n")  # fixed: read again
    clock.tick()
    assert _every_model(keys.lookup("sk-team-b-0000000"))
    assert keys.lookup("sk-team-a-0000000") is None


def _every_model(grant: Grant | None) -> bool:
    """A key valid for every model (its account and label are its own)."""
    return grant is not None and grant.models is None
