"""redis.mode: sentinel (the bundled Valkey as a primary, its replicas and a Sentinel beside each) and
redis.external.sentinel (Sentinels of your own): what the chart renders, and that the gateway's and the model
pods' URLs are ones the code reads (``wire.redis_url``)."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest

from tests.chart.rendering import Manifest, Rendered, render
from wire.redis_url import parse_cluster, parse_sentinel

pytestmark = pytest.mark.chart

ONE_MODEL = {"models": [{"name": "tiny", "source": "org/tiny"}]}
SENTINEL = ONE_MODEL | {"redis": {"mode": "sentinel"}}
PODS = [f"kaltstart-redis-{i}.kaltstart-redis-headless.llm.svc" for i in range(3)]


def _env(rendered: Rendered, deployment: str) -> dict[str, Manifest]:
    container = rendered.get("Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item for item in container["env"]}


def _url(env: dict[str, Manifest], secrets: dict[str, str]) -> str:
    """REDIS_URL with its $(VAR)s filled as the kubelet would."""
    url: str = env["REDIS_URL"]["value"]
    for name, value in secrets.items():
        url = url.replace(f"$({name})", value)
    return url


def test_three_pods_each_with_a_sentinel_spread_over_nodes_behind_a_budget(chart: helm_python.Chart) -> None:
    rendered = render(chart, SENTINEL)
    statefulset = rendered.get("StatefulSet", "kaltstart-redis")
    pod = statefulset["spec"]["template"]["spec"]
    assert statefulset["spec"]["replicas"] == 3
    assert [c["name"] for c in pod["containers"]] == ["redis", "sentinel"]
    sentinel = pod["containers"][1]
    assert sentinel["ports"] == [{"name": "sentinel", "containerPort": 26379, "protocol": "TCP"}]
    assert sentinel["command"][-1].rstrip().endswith("exec valkey-server /tmp/sentinel/sentinel.conf --sentinel")
    script = sentinel["command"][-1]
    assert "sentinel monitor kaltstart %s 6379 2" in script
    assert "$REDIS_PASSWORD" not in " ".join(sentinel["command"][:-1])  # no password on a command line
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    budget = rendered.get("PodDisruptionBudget", "kaltstart-redis")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == term["podAffinityTerm"]["labelSelector"]
    hard = render(chart, SENTINEL | {"redis": {"mode": "sentinel", "sentinel": {"antiAffinity": "hard"}}})
    pod = hard.get("StatefulSet", "kaltstart-redis")["spec"]["template"]["spec"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]


def test_no_virtual_ip_over_replicas_only_the_pods_names_and_their_sentinel_port(chart: helm_python.Chart) -> None:
    rendered = render(chart, SENTINEL)
    assert [s["metadata"]["name"] for s in rendered.of_kind("Service") if "redis" in s["metadata"]["name"]] == [
        "kaltstart-redis-headless"
    ]
    ports = rendered.get("Service", "kaltstart-redis-headless")["spec"]["ports"]
    assert [(p["name"], p["port"]) for p in ports] == [("redis", 6379), ("sentinel", 26379)]


def test_the_gateway_follows_the_primary_and_waits_for_a_replica(chart: helm_python.Chart) -> None:
    env = _env(render(chart, SENTINEL), "kaltstart-gateway")
    target = parse_sentinel(_url(env, {"REDIS_PASSWORD": "pw"}))
    assert target.sentinels == tuple((pod, 26379) for pod in PODS)
    assert (target.service, target.db, target.password, target.sentinel_password) == ("kaltstart", 0, "pw", "pw")
    assert env["KALTSTART_REDIS_WAIT_REPLICAS"]["value"] == "1"
    assert env["KALTSTART_REDIS_WAIT_TIMEOUT"]["value"] == "500ms"


def test_model_pods_ask_the_sentinels_as_the_publish_only_user(chart: helm_python.Chart) -> None:
    rendered = render(chart, SENTINEL)
    env = _env(rendered, "kaltstart-tiny")
    assert "REDIS_PASSWORD" not in env
    target = parse_sentinel(_url(env, {"REDIS_ANNOUNCE_PASSWORD": "apw"}))
    assert (target.username, target.password) == ("announcer", "apw")
    assert (target.sentinel_username, target.sentinel_password) == ("announcer", "apw")
    pod = rendered.get("StatefulSet", "kaltstart-redis")["spec"]["template"]["spec"]
    # On the data nodes it may publish on one channel; on the Sentinels, ask where the primary is.
    assert "&kaltstart:replicas -@all +publish" in pod["containers"][0]["command"][2]
    assert "-@all +sentinel|masters" in pod["containers"][1]["command"][-1]


def test_the_network_policy_opens_the_sentinel_port_and_lets_the_pods_reach_each_other(
    chart: helm_python.Chart,
) -> None:
    rules = render(chart, SENTINEL).get("NetworkPolicy", "kaltstart-redis")["spec"]["ingress"]
    clients, peers = rules
    assert [p["port"] for p in clients["ports"]] == [6379, 26379]
    components = [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in clients["from"]]
    assert components == ["gateway", "model"]
    assert [p["port"] for p in peers["ports"]] == [6379, 26379]
    assert peers["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"


def test_standalone_is_unchanged(chart: helm_python.Chart) -> None:
    rendered = render(chart, ONE_MODEL)
    assert rendered.get("StatefulSet", "kaltstart-redis")["spec"]["replicas"] == 1
    assert [
        c["name"] for c in rendered.get("StatefulSet", "kaltstart-redis")["spec"]["template"]["spec"]["containers"]
    ] == ["redis"]
    env = _env(rendered, "kaltstart-gateway")
    assert env["REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@kaltstart-redis:6379/0"
    assert "KALTSTART_REDIS_WAIT_REPLICAS" not in env
    assert [b["metadata"]["name"] for b in rendered.of_kind("PodDisruptionBudget")] == ["kaltstart-gateway"]


EXTERNAL: dict[str, Any] = {
    "hosts": ["sentinel-a.example:26379", "sentinel-b.example:26380"],
    "masterName": "queue",
    "existingSecret": "my-redis",
    "sentinelPasswordKey": "sentinel-password",
}


def test_external_sentinels_render_no_server_and_build_both_urls(chart: helm_python.Chart) -> None:
    rendered = render(chart, ONE_MODEL | {"redis": {"external": {"sentinel": EXTERNAL}}})
    assert not [o for o in rendered.objects if o["metadata"]["name"].startswith("kaltstart-redis")]
    env = _env(rendered, "kaltstart-gateway")
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "my-redis", "key": "redis-password"}
    assert env["REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "sentinel-password"
    target = parse_sentinel(_url(env, {"REDIS_PASSWORD": "pw", "REDIS_SENTINEL_PASSWORD": "spw"}))
    assert target.sentinels == (("sentinel-a.example", 26379), ("sentinel-b.example", 26380))
    assert (target.service, target.password, target.sentinel_password) == ("queue", "pw", "spw")
    assert env["KALTSTART_REDIS_WAIT_REPLICAS"]["value"] == "0"
    model = _env(rendered, "kaltstart-tiny")
    assert model["REDIS_ANNOUNCE_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "redis-announce-password"
    announcer = parse_sentinel(_url(model, {"REDIS_ANNOUNCE_PASSWORD": "apw"}))
    assert (announcer.username, announcer.password, announcer.sentinel_username) == ("announcer", "apw", "announcer")


def test_external_sentinels_need_a_secret_and_a_master_name(chart: helm_python.Chart) -> None:
    for missing in ("existingSecret", "masterName"):
        values = ONE_MODEL | {"redis": {"external": {"sentinel": EXTERNAL | {missing: ""}}}}
        with pytest.raises(Exception, match=f"redis.external.sentinel.{missing}"):
            render(chart, values)


def test_a_cluster_of_your_own_is_given_by_its_url_and_read_as_a_cluster(chart: helm_python.Chart) -> None:
    cluster = {"url": "redis+cluster://:pw@node-a:6379,node-b:6380", "announceUrl": "redis+cluster://ann:apw@node-a"}
    rendered = render(chart, ONE_MODEL | {"redis": cluster})
    assert not [o for o in rendered.objects if o["metadata"]["name"].startswith("kaltstart-redis")]
    target = parse_cluster(_url(_env(rendered, "kaltstart-gateway"), {}))
    assert (target.nodes, target.password) == ((("node-a", 6379), ("node-b", 6380)), "pw")
