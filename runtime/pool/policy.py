"""Which models must leave the device (and the host) so that one more can be active: budgets and LRU, nothing else.

A model is *active* (weights on the device), *parked* (weights in host memory) or *absent* (on disk only). To make
``wanted`` active, the least recently used idle active models leave the device until the active weights plus
``wanted``'s fit the device budget. Each one leaving is parked if the parked weights then fit the host budget;
otherwise the least recently used of the parked models and it go to disk (absent) until they fit, so what stays in
host memory is what was used last. ``wanted``, if parked, counts against the host budget until it is woken: the
moves run before the wake, and the budget holds at every step.

A *busy* model (it holds requests, or a batch is on its way to it) never leaves the device. If the idle ones are not
enough, ``make_room`` answers None and the caller waits for a model to become idle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from runtime.errors import ModelTooLarge
from wire import ModelState

__all__ = ["Budgets", "Move", "Slot", "make_room", "park"]


@dataclass(frozen=True)
class Budgets:
    """Most weight bytes on the device (active models) and in host memory (parked ones)."""

    device_bytes: int
    host_bytes: int


@dataclass(frozen=True)
class Slot:
    """One model as the policy sees it. ``last_used``: when a batch last went to it (any clock, larger is later)."""

    name: str
    state: ModelState
    weight_bytes: int
    last_used: float
    busy: bool = False


@dataclass(frozen=True)
class Move:
    """Take model ``name`` from where it is to ``to`` (``parked`` or ``absent``)."""

    name: str
    to: ModelState


def make_room(slots: Sequence[Slot], wanted: str, budgets: Budgets) -> list[Move] | None:
    """The moves, in the order to make them, after which ``wanted`` can become active within both budgets; None if
    busy models are in the way. Raises ``ModelTooLarge`` if ``wanted`` alone exceeds the device budget."""
    target = next(slot for slot in slots if slot.name == wanted)
    if target.weight_bytes > budgets.device_bytes:
        raise ModelTooLarge(
            f"{wanted} needs {target.weight_bytes} bytes, more than the pool's device budget of {budgets.device_bytes}"
        )
    victims = _leaving_the_device(slots, target, budgets.device_bytes)
    if victims is None:
        return None
    parked = [slot for slot in slots if slot.state == "parked" and slot.name != wanted]
    host_used = sum(slot.weight_bytes for slot in parked) + (target.weight_bytes if target.state == "parked" else 0)
    moves: list[Move] = []
    for victim in victims:
        host_used = _off_the_device(victim, parked, host_used, budgets.host_bytes, moves)
    return moves


def park(slots: Sequence[Slot], name: str, budgets: Budgets) -> list[Move]:
    """The moves that take active ``name`` off the device when the gateway's keep-alive asks (``POST
    /v1/pool/park``): parked, as under budget pressure, after the least recently used parked models went to disk to
    make room in host memory; to disk itself if it is the least recently used of them. The caller checks it is
    idle."""
    target = next(slot for slot in slots if slot.name == name)
    parked = [slot for slot in slots if slot.state == "parked"]
    moves: list[Move] = []
    _off_the_device(target, parked, sum(slot.weight_bytes for slot in parked), budgets.host_bytes, moves)
    return moves


def _off_the_device(victim: Slot, parked: list[Slot], host_used: int, host_bytes: int, moves: list[Move]) -> int:
    """Park ``victim`` (appending the moves), dropping the least recently used parked models (``victim`` among
    them) to disk until the host budget holds; returns the host bytes used after."""
    host_used += victim.weight_bytes
    candidates = sorted([*parked, victim], key=lambda slot: slot.last_used)
    while host_used > host_bytes:
        dropped = candidates.pop(0)
        host_used -= dropped.weight_bytes
        moves.append(Move(dropped.name, "absent"))
        if dropped is not victim:
            parked.remove(dropped)
    if victim in candidates:
        moves.append(Move(victim.name, "parked"))
        parked.append(victim)
    return host_used


def _leaving_the_device(slots: Sequence[Slot], target: Slot, device_bytes: int) -> list[Slot] | None:
    """The least recently used idle active models whose leaving makes room for ``target``; None if they cannot."""
    active = [slot for slot in slots if slot.state == "active" and slot.name != target.name]
    excess = sum(slot.weight_bytes for slot in active) + target.weight_bytes - device_bytes
    victims: list[Slot] = []
    for slot in sorted((slot for slot in active if not slot.busy), key=lambda slot: slot.last_used):
        if excess <= 0:
            break
        victims.append(slot)
        excess -= slot.weight_bytes
    return victims if excess <= 0 else None
