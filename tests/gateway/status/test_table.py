"""The status table and its JSON: every column shows its own field (distinct values, so a swapped or hard-coded
field fails), the states and the scale-down countdown follow the scaling rules."""

from __future__ import annotations

import json

import pytest

from gateway.backends import Replicas
from gateway.metrics import Metrics
from gateway.queue.stream import Load
from gateway.settings import ModelSettings
from gateway.status.report import ModelStatus, Served, keep_alive
from gateway.status.sources import parse_metrics
from gateway.status.table import COLUMNS, SCHEMA, duration, render_json, render_table, row

pytestmark = pytest.mark.unit


def settings(name: str = "m", **values: str) -> ModelSettings:
    keys = {key.replace("_", "-"): value for key, value in values.items()}
    return ModelSettings.parse(name, {"idle-timeout": "120s", "min-replicas": "0", **keys})


WARM = Replicas(desired=3, ready=3)
IDLE = Load(queued=0, in_flight=0, idle_for_s=75.0)


def status(
    replicas: Replicas | None = WARM,
    load: Load = IDLE,
    cold_start_s: float | None = 4.25,
    pool: dict[str, int] | None = None,
    **values: str,
) -> ModelStatus:
    model = settings(**values)
    served = Served(model, "m", replicas, pooled=pool is not None, pool=pool)
    return ModelStatus(served, load, cold_start_s, keep_alive(model, None, cold_start_s, 1.0))


def test_each_column_shows_its_own_field() -> None:
    busy = status(Replicas(desired=2, ready=1), Load(queued=7, in_flight=5, idle_for_s=3.5), pool={"parked": 1})
    cells = dict(zip(COLUMNS, row(busy), strict=True))
    assert cells == {
        "MODEL": "m",
        "READY/DESIRED": "1/2",
        "QUEUED": "7",
        "IN FLIGHT": "5",
        "LAST ACTIVITY": "3.5s ago",
        "STATE": "scaling up",
        "KEEP-ALIVE": "2m00s fixed",
        "COLD START": "4.2s",
        "POOL": "parked 1",
    }


def test_the_table_lines_up_and_names_where_the_replicas_came_from() -> None:
    text = render_table([status(), status(None, Load(0, 0, None), None)], "gateway http://g/metrics")
    lines = text.splitlines()
    assert lines[0].split("  ")[0] == "MODEL"
    assert [line.index("QUEUED") if i == 0 else None for i, line in enumerate(lines[:1])] == [lines[0].index("QUEUED")]
    starts = {line.index(cell) for line, cell in ((lines[0], "READY/DESIRED"), (lines[1], "3/3"), (lines[2], "?"))}
    assert len(starts) == 1  # one column, however wide its cells
    assert "never" in lines[2] and "unknown" in lines[2]
    assert lines[-1] == "replicas from gateway http://g/metrics"


@pytest.mark.parametrize(
    ("replicas", "load", "state", "down_in_s"),
    [
        (Replicas(2, 1), Load(0, 0, 500.0), "scaling_up", None),
        (Replicas(1, 2), Load(0, 0, 500.0), "scaling_down", None),
        (Replicas(1, 1), Load(1, 0, 0.0), "busy", None),
        (Replicas(1, 1), Load(0, 1, 0.0), "busy", None),
        (Replicas(1, 1), Load(0, 0, 20.0), "idle", 100.0),
        (Replicas(1, 1), Load(0, 0, 500.0), "idle", 0.0),  # due: the next pass scales it down
        (Replicas(0, 0), Load(0, 0, 20.0), "at_rest", None),
        (None, Load(0, 0, 20.0), "unknown", None),
    ],
)
def test_state_and_scale_down_countdown(
    replicas: Replicas | None, load: Load, state: str, down_in_s: float | None
) -> None:
    found = status(replicas, load)
    assert (found.state, found.scale_down_in_s) == (state, down_in_s)


def test_a_floor_above_zero_is_at_rest() -> None:
    assert status(Replicas(1, 1), min_replicas="1").state == "at_rest"


def test_an_adaptive_model_without_enough_gaps_falls_back_to_its_idle_timeout() -> None:
    model = settings(idle_policy="adaptive")
    assert model.idle_policy == "adaptive"
    decided = keep_alive(model, [30.0, 31.0], 4.0, 1.0)
    assert (decided.keep_s, decided.learned) == (120.0, False)
    learned = keep_alive(model, [30.0] * 40, 4.0, 1.0)
    assert learned.learned and learned.keep_s < 120.0
    assert learned.prewarm_at_s is not None and learned.prewarm_until_s is not None
    assert learned.prewarm_at_s + 4.0 <= 30.0 < learned.prewarm_until_s  # warm again when the next request is due
    served = Served(model, "m", Replicas(0, 0))
    cells = dict(zip(COLUMNS, row(ModelStatus(served, Load(0, 0, 1.0), 4.0, learned)), strict=True))
    assert cells["KEEP-ALIVE"].startswith(f"{duration(learned.keep_s)} learned, pre-warm ")


def test_json_has_the_documented_schema_and_values() -> None:
    document = json.loads(
        render_json([status(Replicas(2, 1), Load(7, 5, 3.5), pool={"active": 2})], "local", "gateway x")
    )
    assert document["schema"] == SCHEMA
    assert (document["backend"], document["replicas_from"]) == ("local", "gateway x")
    assert document["models"] == [
        {
            "model": "m",
            "unit": "m",
            "replicas": {"desired": 2, "ready": 1},
            "queued": 7,
            "in_flight": 5,
            "last_activity_age_s": 3.5,
            "state": "scaling_up",
            "scale_down_in_s": None,
            "keep_alive": {
                "policy": "fixed",
                "keep_s": 120.0,
                "prewarm_at_s": None,
                "prewarm_until_s": None,
                "learned": False,
                "reason": "idle-policy fixed",
            },
            "cold_start_s": 4.25,
            "pool": {"active": 2},
        }
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.84, "0.8s"), (42, "42s"), (245, "4m05s"), (7380, "2h03m"), (273600, "3d04h"), (float("inf"), "forever")],
)
def test_durations(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_replicas_and_pool_states_read_back_from_what_a_gateway_exports() -> None:
    metrics = Metrics()
    metrics.observe_model("a", 4, 2, Replicas(desired=3, ready=2))
    metrics.observe_model("b", 0, 0, Replicas(desired=0, ready=0))
    exported = metrics.render().decode() + (
        '# TYPE kaltstart_model_state gauge\nkaltstart_model_state{model="a",state="parked"} 1.0\n'
    )
    scraped = parse_metrics(exported)
    assert scraped.replicas == {"a": Replicas(desired=3, ready=2), "b": Replicas(desired=0, ready=0)}
    assert scraped.pools == {"a": {"parked": 1}}
