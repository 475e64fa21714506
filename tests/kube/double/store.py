"""One generic object store with kube-apiserver write semantics, history and watch fan-out.

Objects are keyed by (group, version, plural, namespace, name). Every write takes the next value of one global
``resourceVersion`` counter; writes that change nothing are not persisted (no new resourceVersion, no watch
event), as on a real server. ``metadata.generation`` starts at 1 for objects with a ``spec`` and increments
when the spec changes. A bounded history of changes lets a watch resume from a resourceVersion; resuming from
before the history raises 410 Expired.

All methods are synchronous and run on the event loop that serves the double, so a write and its fan-out to
watchers are atomic with respect to every reader.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from . import errors
from .patches import apply_patch
from .resources import ResourceType
from .selection import ANY_FIELDS, ANY_LABELS, FieldSelector, LabelSelector
from .validation import default, validate
from .watches import Watcher, WatchEvent

Key = tuple[str, str, str, str, str]
T = TypeVar("T")
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_timestamp(now: datetime | None = None) -> str:
    """RFC 3339 in UTC with whole seconds, as the API server writes ``metav1.Time``."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(length: int = 5) -> str:
    return "".join(secrets.choice(_NAME_ALPHABET) for _ in range(length))


def _key(rt: ResourceType, namespace: str, name: str) -> Key:
    return (rt.group, rt.version, rt.plural, namespace if rt.namespaced else "", name)


def _resource_version(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


@dataclass(frozen=True)
class Change:
    """One persisted write, as kept in the history and fanned out to watchers."""

    type: str  # ADDED, MODIFIED or DELETED
    rt: ResourceType
    rv: int
    obj: dict[str, Any]
    old: dict[str, Any] | None


@dataclass(frozen=True)
class WatchScope:
    """What one watch asked for; turns a ``Change`` into the event that watch should see, if any."""

    rt: ResourceType
    namespace: str | None
    labels: LabelSelector = ANY_LABELS
    fields: FieldSelector = ANY_FIELDS

    def selects(self, obj: dict[str, Any]) -> bool:
        return self.labels.matches(obj) and self.fields.matches(obj)

    def in_scope(self, rt: ResourceType, obj: dict[str, Any]) -> bool:
        namespace = obj["metadata"].get("namespace", "")
        return rt == self.rt and (self.namespace is None or namespace == self.namespace)

    def event_for(self, change: Change) -> WatchEvent | None:
        """As a real server does for selectors: an object that starts matching is ADDED for this watch, one
        that stops matching is DELETED."""
        if not self.in_scope(change.rt, change.obj):
            return None
        if change.type == "DELETED":
            return WatchEvent("DELETED", change.obj) if self.selects(change.obj) else None
        matched_before = change.old is not None and self.selects(change.old)
        if self.selects(change.obj):
            return WatchEvent("MODIFIED" if matched_before else "ADDED", change.obj)
        return WatchEvent("DELETED", change.obj) if matched_before else None


class Store:
    """``clock`` stamps ``creationTimestamp`` (tests move it forward to order objects created within one second,
    which on a real server share a timestamp)."""

    def __init__(self, history_size: int = 1000, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.clock = clock
        self._objects: dict[Key, dict[str, Any]] = {}
        # An empty cluster is at resourceVersion 1, not 0: "0" in a watch or list means "any version".
        self._rv = 1
        self._history: deque[Change] = deque()
        self._history_size = history_size
        self._compacted_rv = 1
        self._watchers: set[Watcher] = set()
        self._waiters: set[asyncio.Event] = set()

    @property
    def resource_version(self) -> int:
        return self._rv

    # -- reads ---------------------------------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self._current(rt, namespace, name))

    def find(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self._objects.get(_key(rt, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(
        self,
        rt: ResourceType,
        namespace: str | None = None,
        labels: LabelSelector = ANY_LABELS,
        fields: FieldSelector = ANY_FIELDS,
    ) -> list[dict[str, Any]]:
        scope = WatchScope(rt, namespace, labels, fields)
        return [copy.deepcopy(obj) for obj in self._scan(scope)]

    def _scan(self, scope: WatchScope) -> Iterator[dict[str, Any]]:
        prefix = (scope.rt.group, scope.rt.version, scope.rt.plural)
        for key in sorted(self._objects):
            obj = self._objects[key]
            if key[:3] == prefix and scope.in_scope(scope.rt, obj) and scope.selects(obj):
                yield obj

    def _current(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        obj = self._objects.get(_key(rt, namespace, name))
        if obj is None:
            raise errors.not_found(rt, name)
        return obj

    # -- writes --------------------------------------------------------------------------------------------

    def create(self, rt: ResourceType, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        metadata = obj.setdefault("metadata", {})
        self._check_namespace(rt, namespace, metadata)
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = self._generate_name(rt, namespace, metadata["generateName"])
        name = metadata.get("name", "")
        if _key(rt, namespace, name) in self._objects:
            raise errors.already_exists(rt, name)
        if rt.namespaced:
            metadata["namespace"] = namespace
        metadata.update(uid=str(uuid.uuid4()), creationTimestamp=now_timestamp(self.clock()))
        metadata.pop("resourceVersion", None)
        if rt.has_status:
            obj.pop("status", None)
        default(rt, obj)
        validate(rt, obj)
        return self._commit(rt, obj, None)

    def replace(
        self, rt: ResourceType, namespace: str, name: str, body: dict[str, Any], status: bool = False
    ) -> dict[str, Any]:
        """PUT: the whole object, or (``status=True``) only its status, guarded by body's resourceVersion."""
        old = self._current(rt, namespace, name)
        self._check_precondition(rt, name, old, _resource_version(body))
        if status:
            new = copy.deepcopy(old)
            new["status"] = copy.deepcopy(body.get("status") or {})
            return self._commit(rt, new, old)
        new = copy.deepcopy(body)
        metadata = new.setdefault("metadata", {})
        self._check_namespace(rt, namespace, metadata)
        if metadata.get("name") != name:
            raise errors.bad_request(f"the name of the object ({metadata.get('name')}) does not match the URL")
        for field in ("uid", "creationTimestamp", "namespace", "generation"):
            if field in old["metadata"]:
                metadata[field] = old["metadata"][field]
        if rt.has_status:
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        default(rt, new)
        validate(rt, new)
        return self._commit(rt, new, old)

    def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        content_type: str,
        patch: Any,
        status: bool = False,
    ) -> dict[str, Any]:
        patched = apply_patch(self._current(rt, namespace, name), content_type, patch)
        return self.replace(rt, namespace, name, patched, status=status)

    def update(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        mutate: Callable[[dict[str, Any]], None],
        status: bool = False,
    ) -> dict[str, Any]:
        """Read-modify-write for the double's own controllers: never conflicts, skips no-op writes."""
        body = self.get(rt, namespace, name)
        mutate(body)
        body["metadata"].pop("resourceVersion", None)
        return self.replace(rt, namespace, name, body, status=status)

    def delete(
        self, rt: ResourceType, namespace: str, name: str, preconditions: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        old = self._current(rt, namespace, name)
        preconditions = preconditions or {}
        self._check_precondition(rt, name, old, str(preconditions.get("resourceVersion") or ""))
        if preconditions.get("uid") and preconditions["uid"] != old["metadata"]["uid"]:
            raise errors.conflict(rt, name)
        del self._objects[_key(rt, namespace, name)]
        self._rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._record(Change("DELETED", rt, self._rv, gone, copy.deepcopy(old)))
        return copy.deepcopy(gone)

    def _commit(self, rt: ResourceType, new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        metadata = new["metadata"]
        if old is None:
            if "spec" in new:
                metadata["generation"] = 1
        else:
            metadata["resourceVersion"] = old["metadata"]["resourceVersion"]
            if "generation" in old["metadata"] and new.get("spec") != old.get("spec"):
                metadata["generation"] = old["metadata"]["generation"] + 1
            if new == old:
                return copy.deepcopy(old)
        self._rv += 1
        metadata["resourceVersion"] = str(self._rv)
        self._objects[_key(rt, metadata.get("namespace", ""), metadata["name"])] = new
        change_type = "ADDED" if old is None else "MODIFIED"
        self._record(Change(change_type, rt, self._rv, copy.deepcopy(new), copy.deepcopy(old)))
        return copy.deepcopy(new)

    def _check_precondition(self, rt: ResourceType, name: str, old: dict[str, Any], expected: str) -> None:
        if expected and expected != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rt, name)

    @staticmethod
    def _check_namespace(rt: ResourceType, namespace: str, metadata: dict[str, Any]) -> None:
        if rt.namespaced and metadata.get("namespace") not in (None, "", namespace):
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )

    def _generate_name(self, rt: ResourceType, namespace: str, prefix: str) -> str:
        while True:
            name = prefix + random_suffix()
            if _key(rt, namespace, name) not in self._objects:
                return name

    # -- history and watches -------------------------------------------------------------------------------

    def _record(self, change: Change) -> None:
        self._history.append(change)
        if len(self._history) > self._history_size:
            self._compacted_rv = self._history.popleft().rv
        for watcher in list(self._watchers):
            event = watcher.scope.event_for(change)
            if event is not None:
                watcher.push(event)
        for waiter in self._waiters:
            waiter.set()

    def watch(self, scope: WatchScope, resource_version: str | None, internal: bool = False) -> Watcher:
        """Start a watch: synthetic ADDED events for "" / "0", else the history after ``resource_version``."""
        watcher = Watcher(scope, internal)
        if resource_version in (None, "", "0"):
            for obj in self._scan(scope):
                watcher.push(WatchEvent("ADDED", copy.deepcopy(obj)))
        else:
            since = self._parse_rv(resource_version)
            if since < self._compacted_rv:
                raise errors.expired(since, self._compacted_rv + 1)
            for change in self._history:
                event = scope.event_for(change) if change.rv > since else None
                if event is not None:
                    watcher.push(event)
        self._watchers.add(watcher)
        return watcher

    @staticmethod
    def _parse_rv(resource_version: str) -> int:
        try:
            return int(resource_version)
        except ValueError as exc:
            raise errors.bad_request(f"invalid resource version: {resource_version!r}") from exc

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def close_watches(self, abrupt: bool = False) -> int:
        """End every open watch stream (not the double's own watches); returns how many there were."""
        watchers = [watcher for watcher in self._watchers if not watcher.internal]
        for watcher in watchers:
            self._watchers.discard(watcher)
            watcher.close(abrupt)
        return len(watchers)

    def expire_history(self) -> None:
        """Forget all history: a watch that resumes from any resourceVersion handed out so far, the latest
        included, gets 410. (Stronger than an etcd compaction, which keeps the latest revision watchable: a
        test of a client's relist path needs every resume to fail.)"""
        self._history.clear()
        self._compacted_rv = self._rv + 1

    async def wait_until(self, check: Callable[[], T | None], timeout_s: float, what: str = "condition") -> T:
        """Re-evaluate ``check`` after every write until it returns a truthy value, or fail at the deadline."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    result = check()
                    if result:
                        return result
                    event = asyncio.Event()
                    self._waiters.add(event)
                    try:
                        await event.wait()
                    finally:
                        self._waiters.discard(event)
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}") from None
