"""Where ``python -m gateway`` leaves its embedded Valkey's URL for ``status``: found by port, private, removed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.store.embedded import UrlFile

pytestmark = pytest.mark.unit


def test_the_url_is_found_by_the_gateways_port_while_published(tmp_path: Path) -> None:
    environ = {"XDG_RUNTIME_DIR": str(tmp_path)}
    with UrlFile(8080, environ).published("redis://:secret@127.0.0.1:5/0"):
        assert UrlFile(8080, environ).read() == "redis://:secret@127.0.0.1:5/0"
        assert UrlFile(8081, environ).read() is None
        assert os.stat(UrlFile(8080, environ).path).st_mode & 0o777 == 0o600
        assert os.stat(tmp_path / "kaltstart").st_mode & 0o777 == 0o700
    assert UrlFile(8080, environ).read() is None


def test_a_directory_others_can_enter_is_neither_written_nor_read(tmp_path: Path) -> None:
    (tmp_path / "kaltstart").mkdir(mode=0o755)
    os.chmod(tmp_path / "kaltstart", 0o755)
    file = UrlFile(8080, {"XDG_RUNTIME_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match="not a private directory"):
        file.write("redis://:secret@127.0.0.1:5/0")
    file.path.write_text("redis://planted\n")
    with pytest.raises(ConfigError, match="not a private directory"):
        file.read()
