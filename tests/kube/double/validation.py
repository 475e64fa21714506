"""Defaulting and the handful of validation rules the gateway could plausibly trip over.

This is not admission: only names, label values, Deployment selectors/replicas and the required fields of
``events.k8s.io/v1`` Events are checked, so that a client bug the real server would reject with 422 is not
silently accepted here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import invalid
from .resources import ResourceType
from .selection import LabelSelector, selector_string

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

Validator = Callable[[dict[str, Any]], list[str]]


def default(rt: ResourceType, obj: dict[str, Any]) -> None:
    """Fill the defaults a client reads back and may depend on."""
    if rt.kind == "Deployment" and rt.group == "apps":
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("template", {}).setdefault("spec", {}).setdefault("restartPolicy", "Always")
    elif rt.kind == "Pod" and rt.group == "":
        obj.setdefault("spec", {}).setdefault("restartPolicy", "Always")


def _metadata_problems(obj: dict[str, Any]) -> list[str]:
    metadata = obj.get("metadata") or {}
    name = metadata.get("name", "")
    problems: list[str] = []
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        problems.append(f"metadata.name: Invalid value: {name!r}: must be a lowercase RFC 1123 subdomain")
    for key, value in (metadata.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(f"metadata.labels: Invalid value: {value!r} for label {key!r}")
    return problems


def _deployment_problems(obj: dict[str, Any]) -> list[str]:
    spec = obj.get("spec") or {}
    problems: list[str] = []
    replicas = spec.get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        problems.append(f"spec.replicas: Invalid value: {replicas!r}: must be greater than or equal to 0")
    selector = spec.get("selector")
    template = spec.get("template") or {}
    if not selector or not selector_string(selector):
        problems.append("spec.selector: Required value")
    elif not LabelSelector.parse(selector_string(selector)).matches(template):
        problems.append("spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`")
    if not (template.get("spec") or {}).get("containers"):
        problems.append("spec.template.spec.containers: Required value")
    return problems


def _events_v1_problems(obj: dict[str, Any]) -> list[str]:
    problems = [
        f"{field}: Required value"
        for field in ("eventTime", "reportingController", "reportingInstance", "action", "reason")
        if not obj.get(field)
    ]
    if obj.get("type") not in ("Normal", "Warning"):
        problems.append(f"type: Unsupported value: {obj.get('type')!r}: supported values: Normal, Warning")
    return problems


def _lease_problems(obj: dict[str, Any]) -> list[str]:
    duration = (obj.get("spec") or {}).get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or duration <= 0):
        return [f"spec.leaseDurationSeconds: Invalid value: {duration!r}: must be greater than 0"]
    return []


_VALIDATORS: dict[tuple[str, str], Validator] = {
    ("apps/v1", "Deployment"): _deployment_problems,
    ("events.k8s.io/v1", "Event"): _events_v1_problems,
    ("coordination.k8s.io/v1", "Lease"): _lease_problems,
}


def validate(rt: ResourceType, obj: dict[str, Any]) -> None:
    problems = _metadata_problems(obj)
    validator = _VALIDATORS.get((rt.api_version, rt.kind))
    if validator is not None:
        problems.extend(validator(obj))
    if problems:
        raise invalid(rt, (obj.get("metadata") or {}).get("name", ""), problems)
