"""The local config file's pools (``[pools.<name>]``): what is read, what is refused, what a pool's replica runs,
and that a pool is one scaling unit of the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.backends.local.backend import LocalBackend, build_local
from gateway.backends.local.config import LocalConfig, LocalModel, LocalPool, dump_local_config, load_local_config
from gateway.backends.local.runtimes import RuntimeEnvironment
from gateway.errors import ConfigError
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.settings import ModelSettings

pytestmark = pytest.mark.unit

POOL_FILE = """
[models.a]
source = "/m/a"
idle-timeout = "5s"
[models.b]
source = "/m/b"
max-batch-size = 16
[models.c]
source = "/m/c"
[models.alone]
source = "/m/alone"
engine = "echo"
[pools.three]
models = ["a", "b", "c"]
device = "cpu"
device-bytes = 4000000
host-bytes = 0
args = ["--pool-wait-s", "5"]
"""


def config_from(tmp_path: Path, text: str) -> LocalConfig:
    path = tmp_path / "kaltstart.toml"
    path.write_text(text)
    return load_local_config(path)


def test_a_pool_is_read_with_its_budgets(tmp_path: Path) -> None:
    config = config_from(tmp_path, POOL_FILE)
    (pool,) = config.pools
    assert pool == LocalPool(
        name="three", models=("a", "b", "c"), device="cpu", device_bytes=4_000_000, host_bytes=0,
        args=("--pool-wait-s", "5"),
    )  # fmt: skip
    assert config.pool_of("b") is pool and config.pool_of("alone") is None
    assert config.units() == {"a": "three", "b": "three", "c": "three"}


def test_a_pool_written_reads_back_the_same(tmp_path: Path) -> None:
    config = config_from(tmp_path, POOL_FILE)
    assert config_from(tmp_path, dump_local_config(config)) == config


@pytest.mark.parametrize(
    ("pool", "member", "error"),
    [
        ('models = ["a", "x"]', "", r"no \[models\.x\]"),
        ("models = []", "", "non-empty list"),
        ('models = ["a"]\nhost-bytes = -1', "", "host-bytes.*at least 0"),
        ('models = ["a"]\ndevice-bytes = 0', "", "device-bytes.*at least 1"),
        ('models = ["a"]\nwait = 3', "", r"unknown settings \['wait'\]"),
        ('models = ["a"]', 'device = "cuda"', r"\['device'\] of a pooled model are set on its pool"),
        ('models = ["a"]', 'engine = "echo"', r"\['engine'\] of a pooled model"),
    ],
)
def test_a_pool_that_cannot_be_served_is_refused(tmp_path: Path, pool: str, member: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        config_from(tmp_path, f'[models.a]\nsource = "/m/a"\n{member}\n[pools.p]\n{pool}\n')


def local(name: str, engine: str = "torch", **values: str) -> LocalModel:
    return LocalModel(settings=ModelSettings.parse(name, values), source=f"/m/{name}", engine=engine)


@pytest.mark.parametrize(
    ("pools", "error"),
    [
        ((LocalPool("p", ("a",)), LocalPool("q", ("a",))), "a is in more than one pool"),
        ((LocalPool("a", ("b",)),), "a pool cannot have a model's name"),
        ((LocalPool("p", ("echo",)),), "echo is not served by the torch runtime"),
    ],
)
def test_pools_must_name_distinct_torch_models(pools: tuple[LocalPool, ...], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        LocalConfig(models=(local("a"), local("b"), local("echo", engine="echo")), pools=pools)


def test_a_pool_replica_runs_one_pool_runtime_for_all_its_models(tmp_path: Path) -> None:
    config = config_from(tmp_path, POOL_FILE)
    backend = LocalBackend(config=config, endpoints=ReadyEndpoints(), env=RuntimeEnvironment())
    group = backend._group("c")
    assert group is backend._group("a") and group.name == "three"
    args = group.runtime_args()
    assert args[:7] == ["--pool", "--model", "a=/m/a", "--model", "b=/m/b", "--model", "c=/m/c"]
    assert " ".join(args).endswith(
        "--device cpu --dtype auto --max-batch-size 16 --pool-device-bytes 4000000 --pool-host-bytes 0 --pool-wait-s 5"
    )
    assert "--pool" not in backend._group("alone").runtime_args()


def test_a_pool_is_one_scaling_unit_of_the_catalog(tmp_path: Path) -> None:
    parts = build_local(config_from(tmp_path, POOL_FILE))
    units = [[m.name for m in unit] for unit in parts.catalog.units()]
    assert units == [["a", "b", "c"], ["alone"]]
