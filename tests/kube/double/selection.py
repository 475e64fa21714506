"""Label and field selectors, parsed from the query string the way kube-apiserver reads them.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x,y)``, ``a`` (exists), ``!a``.
Field selectors: ``path=value``, ``path==value``, ``path!=value`` over the paths a resource allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import bad_request
from .resources import ResourceType

_SET_REQUIREMENT = re.compile(r"^(?P<key>[^\s!=()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_EQUALITY = re.compile(r"^(?P<key>[^\s!=()]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)$")
_EXISTS = re.compile(r"^(?P<bang>!?)\s*(?P<key>[^\s!=()]+)$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # one of: in, notin, exists, !exists
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op == "in":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``(...)``."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def _parse_requirement(text: str) -> Requirement:
    if match := _SET_REQUIREMENT.match(text):
        values = frozenset(v.strip() for v in match["values"].split(",") if v.strip())
        return Requirement(match["key"], match["op"], values)
    if match := _EQUALITY.match(text):
        op = "notin" if match["op"] == "!=" else "in"
        return Requirement(match["key"], op, frozenset({match["value"]}))
    if match := _EXISTS.match(text):
        return Requirement(match["key"], "!exists" if match["bang"] else "exists")
    raise bad_request(f"unable to parse requirement: {text!r}")


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        if not text:
            return cls()
        return cls(tuple(_parse_requirement(part) for part in _split_top_level(text)))

    def matches(self, obj: dict[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(requirement.matches(labels) for requirement in self.requirements)


ANY_LABELS = LabelSelector()


def _field_value(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[tuple[str, bool, str], ...] = ()  # (path, must_equal, value)

    @classmethod
    def parse(cls, text: str | None, rt: ResourceType) -> FieldSelector:
        if not text:
            return cls()
        allowed = {"metadata.name", "metadata.namespace", *rt.field_paths}
        terms: list[tuple[str, bool, str]] = []
        for part in _split_top_level(text):
            match = re.match(r"^([^!=]+?)\s*(==|=|!=)\s*(.*)$", part)
            if not match:
                raise bad_request(f"invalid field selector: {part!r}")
            path, op, value = match.groups()
            if path not in allowed:
                raise bad_request(f'field label not supported: "{path}"')
            terms.append((path, op != "!=", value))
        return cls(tuple(terms))

    def matches(self, obj: dict[str, Any]) -> bool:
        return all((_field_value(obj, path) == value) == equal for path, equal, value in self.terms)


ANY_FIELDS = FieldSelector()


def selector_string(selector: dict[str, Any] | None) -> str:
    """A ``LabelSelector`` object (``matchLabels``/``matchExpressions``) as a query-string selector."""
    if not selector:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values") or []
        if op in ("In", "NotIn"):
            parts.append(f"{key} {op.lower()} ({','.join(sorted(values))})")
        else:
            parts.append(key if op == "Exists" else f"!{key}")
    return ",".join(parts)
