"""Where ``status`` reads the catalogue and each model's replicas, per backend (``report.ReplicaSource``).

- Local backend: the models of the config file the gateway reads (``KALTSTART_CONFIG``); their replicas are that
  gateway's child processes, so only it knows them: they are read from its ``/metrics`` (``kaltstart_replicas``,
  as its autoscaler last observed them, at most one scale interval old; ``kaltstart_model_state`` for pool models).
  A gateway that does not answer leaves the replicas unknown, not the command failed.
- Kubernetes backend: the annotated Deployments, listed once (``gateway.backends.kubernetes.listing``), with the
  owners recorded in Redis; pool states from a gateway's ``/metrics`` when one is named (``--gateway``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.backends import Replicas
from gateway.backends.kubernetes.listing import list_models
from gateway.backends.kubernetes.owners import OwnerStore
from gateway.backends.local.config import LocalConfig
from gateway.settings import KubernetesSettings
from gateway.status.report import Served

#: Seconds to wait for a gateway's ``/metrics``.
SCRAPE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Scraped:
    """What a gateway's ``/metrics`` says of its models."""

    replicas: dict[str, Replicas] = field(default_factory=dict)
    #: Model -> state -> ready pool replicas holding it in that state.
    pools: dict[str, dict[str, int]] = field(default_factory=dict)


def parse_metrics(text: str) -> Scraped:
    """The replicas (``kaltstart_replicas{model,state}``) and pool states (``kaltstart_model_state{model,state}``)
    in a ``/metrics`` text."""
    counts: dict[str, dict[str, int]] = {}
    pools: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("kaltstart_replicas", "kaltstart_model_state"):
            continue
        into = counts if family.name == "kaltstart_replicas" else pools
        for sample in family.samples:
            into.setdefault(sample.labels["model"], {})[sample.labels["state"]] = int(sample.value)
    replicas = {
        model: Replicas(desired=c["desired"], ready=c["ready"])
        for model, c in counts.items()
        if "desired" in c and "ready" in c
    }
    return Scraped(replicas, pools)


class GatewayScrape:
    """A running gateway's ``/metrics`` at ``url`` (its base URL)."""

    def __init__(self, url: str, timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def read(self) -> Scraped | None:
        """What it says, or None if it does not answer (not running, another port)."""
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.get(f"{self.url}/metrics") as response,
            ):
                if response.status != 200:
                    return None
                return parse_metrics(await response.text())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None


class LocalSource:
    """The local backend: ``config``'s models, their replicas from the gateway that runs them."""

    def __init__(self, config: LocalConfig, gateway: GatewayScrape) -> None:
        self._config = config
        self._gateway = gateway
        self.describe = f"gateway {gateway.url}/metrics"

    async def served(self) -> list[Served]:
        scraped = await self._gateway.read()
        if scraped is None:
            self.describe = f"gateway {self._gateway.url}/metrics (not answering: replicas unknown)"
        units = self._config.units()
        return [
            Served(
                settings,
                units.get(settings.name, settings.name),
                None if scraped is None else scraped.replicas.get(settings.name),
                pooled=self._config.pool_of(settings.name) is not None,
                pool=None if scraped is None else scraped.pools.get(settings.name),
            )
            for settings in [*(m.settings for m in self._config.models), *self._config.adapters]
        ]


class KubernetesSource:
    """The Kubernetes backend: the Deployments, listed once; pool states from ``gateway``, if given."""

    def __init__(self, settings: KubernetesSettings, owners: OwnerStore, gateway: GatewayScrape | None) -> None:
        self._settings = settings
        self._owners = owners
        self._gateway = gateway
        namespaces = ", ".join(settings.namespaces)
        self.describe = f"kubernetes Deployments in {namespaces}"

    async def served(self) -> list[Served]:
        listed = await list_models(self._settings, await self._owners.read())
        pools: Mapping[str, dict[str, int]] = {}
        if self._gateway is not None:
            scraped = await self._gateway.read()
            pools = scraped.pools if scraped is not None else {}
        return [
            Served(m.settings, str(m.deployment), m.replicas, pooled=m.pool, pool=pools.get(m.settings.name))
            for m in listed
        ]
