"""LoRA adapters in the local config file (``[models.<name>]`` with ``base`` and ``adapter``): what is read, what is
refused, and that an adapter is a model of the catalog with its base's replicas and scaling unit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.backends.local.backend import build_local
from gateway.backends.local.config import LocalConfig, dump_local_config, load_local_config
from gateway.catalog import ModelCatalog
from gateway.errors import ConfigError
from gateway.settings import Adapter, ModelSettings
from gateway.status.sources import GatewayScrape, LocalSource

pytestmark = pytest.mark.unit

ADAPTER_FILE = """
[models.support-bot]
base = "qwen"
adapter = "org/support-lora@v2"
cold-start-timeout = "20s"

[models.qwen]
source = "/m/qwen"
engine = "echo"
idle-timeout = "7s"
max-replicas = 3

[models.legal]
base = "qwen"
adapter = "./adapters/legal"

[models.other]
source = "/m/other"
"""


def config_from(tmp_path: Path, text: str) -> LocalConfig:
    path = tmp_path / "kaltstart.toml"
    path.write_text(text)
    return load_local_config(path)


def test_an_adapter_is_read_with_its_base_settings_and_its_own(tmp_path: Path) -> None:
    config = config_from(tmp_path, ADAPTER_FILE)
    assert [m.settings.name for m in config.models] == ["qwen", "other"]
    support, legal = config.adapters
    assert support.adapter == Adapter(base="qwen", source="org/support-lora@v2")
    assert legal.adapter == Adapter(base="qwen", source=str(tmp_path / "adapters" / "legal"))  # relative to the file
    assert (support.idle_timeout_s, support.max_replicas) == (7.0, 3)  # its base's: it scales with its base
    assert (support.cold_start_timeout_s, legal.cold_start_timeout_s) == (20.0, 600.0)  # its own
    assert config.units() == {"support-bot": "qwen", "legal": "qwen"}


def test_adapters_written_read_back_the_same(tmp_path: Path) -> None:
    config = config_from(tmp_path, ADAPTER_FILE)
    assert config_from(tmp_path, dump_local_config(config)) == config


BASE = '[models.qwen]\nsource = "/m/qwen"\n'


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (BASE + '[models.a]\nbase = "nope"\nadapter = "x/y"\n', r"models\.a\.base: 'nope' is no \[models"),
        (BASE + '[models.a]\nbase = "qwen"\n', r"models\.a: 'adapter'.*is required"),
        (BASE + '[models.a]\nbase = "qwen"\nadapter = ""\n', r"models\.a\.adapter: '': a directory or a hub id"),
        (BASE + '[models.a]\nbase = "qwen"\nadapter = "x/y"\nmax-replicas = 2\n', r"\['max-replicas'\] are set"),
        (BASE + '[models.a]\nbase = "qwen"\nadapter = "x/y"\n[models.b]\nbase = "a"\nadapter = "x/z"\n', "b.base"),
        (BASE + '[models."a b"]\nbase = "qwen"\nadapter = "x/y"\n', "invalid model name"),
        (
            '[models.up]\nsource = "s"\nprotocol = "openai"\ncommand = ["x"]\n[models.a]\nbase = "up"\nadapter = "x"\n',
            r"'up' is no model with replicas of our runtime",
        ),
        (BASE + '[models.a]\nbase = "qwen"\nadapter = "x/y"\n[pools.p]\nmodels = ["qwen"]\n', "of its own"),
    ],
)
def test_an_adapter_that_cannot_be_served_is_refused(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        config_from(tmp_path, text)


def test_an_adapter_is_a_model_of_the_catalog_in_its_base_unit_and_ready_with_its_base(tmp_path: Path) -> None:
    parts = build_local(config_from(tmp_path, ADAPTER_FILE))
    catalog = parts.catalog
    assert [m.name for m in catalog.all()] == ["qwen", "other", "support-bot", "legal"]
    units = [[m.name for m in unit] for unit in catalog.units()]
    assert units == [["qwen", "support-bot", "legal"], ["other"]]  # the base first: its settings are the unit's
    endpoints = parts.endpoints
    endpoints.set("qwen", ["http://r:1"])
    assert endpoints.get("support-bot") == endpoints.get("legal") == ("http://r:1",)
    assert parts.backend.replicas("support-bot") == parts.backend.replicas("qwen")


def test_a_units_adapters_come_after_its_models_whatever_the_catalog_order() -> None:
    """The first model of a unit gives the unit's scaling settings and name (the Kubernetes backend adds a
    Deployment's routes in no particular order)."""
    base = ModelSettings(name="qwen", idle_timeout_s=7.0)
    lora = dataclasses.replace(base, name="lora", adapter=Adapter(base="qwen", source="org/lora"))
    catalog = ModelCatalog()
    catalog.update([lora, base], units={"lora": "ns/qwen", "qwen": "ns/qwen"})
    assert [[m.name for m in unit] for unit in catalog.units()] == [["qwen", "lora"]]


async def test_python_m_gateway_status_lists_a_local_adapter_in_its_base_unit(tmp_path: Path) -> None:
    source = LocalSource(config_from(tmp_path, ADAPTER_FILE), GatewayScrape("http://127.0.0.1:1"))  # not running
    served = {s.settings.name: s.unit for s in await source.served()}
    assert served == {"qwen": "qwen", "other": "other", "support-bot": "qwen", "legal": "qwen"}
