"""The double's pure parts: selectors, patches, and the store's history and watch rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.kube.double import manifests
from tests.kube.double.errors import ApiError
from tests.kube.double.patches import JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, apply_patch
from tests.kube.double.resources import CONFIG_MAPS
from tests.kube.double.selection import FieldSelector, LabelSelector, selector_string
from tests.kube.double.store import Store, WatchScope

pytestmark = pytest.mark.kubernetes


def _labelled(**labels: str) -> dict[str, Any]:
    return {"metadata": {"name": "x", "labels": labels}}


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a in (x, y),c", {"a": "y", "c": ""}, True),
        ("a notin (x,y)", {"a": "x"}, False),
        ("!a", {"b": "1"}, True),
        ("a,!b", {"a": "1", "b": "2"}, False),
        ("", {}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert LabelSelector.parse(selector).matches(_labelled(**labels)) is matches


def test_malformed_label_selector_is_400() -> None:
    with pytest.raises(ApiError) as raised:
        LabelSelector.parse("a in x")
    assert raised.value.code == 400


def test_field_selectors_allow_only_supported_fields() -> None:
    selector = FieldSelector.parse("metadata.name=x,metadata.namespace!=kube-system", CONFIG_MAPS)
    assert selector.matches({"metadata": {"name": "x", "namespace": "default"}})
    with pytest.raises(ApiError) as raised:
        FieldSelector.parse("spec.nodeName=n", CONFIG_MAPS)
    assert raised.value.code == 400


def test_selector_string_renders_match_labels_and_expressions() -> None:
    selector = {"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [{"key": "c", "operator": "Exists"}]}
    assert selector_string(selector) == "a=1,b=2,c"


def test_merge_patch_deletes_with_null_and_replaces_lists() -> None:
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    assert apply_patch(target, MERGE_PATCH, {"a": {"b": None}, "l": [3]}) == {"a": {"c": 2}, "l": [3]}


def test_strategic_merge_patch_merges_named_lists() -> None:
    target = {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}
    patch = {"containers": [{"name": "b", "image": "2"}, {"name": "c", "image": "1"}]}
    assert apply_patch(target, STRATEGIC_MERGE_PATCH, patch)["containers"] == [
        {"name": "a", "image": "1"},
        {"name": "b", "image": "2"},
        {"name": "c", "image": "1"},
    ]


def test_json_patch_operations() -> None:
    target = {"spec": {"replicas": 1, "list": ["a"]}, "metadata": {"labels": {"x/y": "1"}}}
    operations = [
        {"op": "test", "path": "/spec/replicas", "value": 1},
        {"op": "replace", "path": "/spec/replicas", "value": 2},
        {"op": "add", "path": "/spec/list/-", "value": "b"},
        {"op": "remove", "path": "/metadata/labels/x~1y"},
        {"op": "copy", "from": "/spec/replicas", "path": "/spec/copied"},
    ]
    assert apply_patch(target, JSON_PATCH, operations) == {
        "spec": {"replicas": 2, "list": ["a", "b"], "copied": 2},
        "metadata": {"labels": {}},
    }
    with pytest.raises(ApiError) as raised:
        apply_patch(target, JSON_PATCH, [{"op": "test", "path": "/spec/replicas", "value": 9}])
    assert raised.value.code == 422


def test_apply_patch_leaves_server_side_apply_to_the_apply_module() -> None:
    with pytest.raises(ApiError) as raised:
        apply_patch({}, "application/apply-patch+yaml", {})
    assert raised.value.code == 415


def _set_data(value: str) -> Callable[[dict[str, Any]], None]:
    def mutate(config_map: dict[str, Any]) -> None:
        config_map["data"] = {"k": value}

    return mutate


def test_a_bounded_history_expires_old_resource_versions() -> None:
    store = Store(history_size=2)
    created = store.create(CONFIG_MAPS, "default", manifests.config_map("a"))
    for value in ("1", "2", "3"):
        store.update(CONFIG_MAPS, "default", "a", _set_data(value))
    scope = WatchScope(CONFIG_MAPS, "default")

    with pytest.raises(ApiError) as raised:
        store.watch(scope, created["metadata"]["resourceVersion"])
    still_there = store.watch(scope, str(store.resource_version - 2))

    assert raised.value.code == 410
    assert still_there is not None


def test_generate_name_and_namespace_mismatch() -> None:
    store = Store()
    named = store.create(CONFIG_MAPS, "default", {"metadata": {"generateName": "cm-"}})
    with pytest.raises(ApiError) as raised:
        store.create(CONFIG_MAPS, "default", {"metadata": {"name": "x", "namespace": "other"}})

    assert named["metadata"]["name"].startswith("cm-") and len(named["metadata"]["name"]) == 8
    assert raised.value.code == 400
