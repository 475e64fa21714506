"""Reading what a gateway's log says about its replicas (the runtime's lines are relayed into it).

Neither the gateway nor the runtime exposes its start-up timeline in a machine-readable form yet, so the cold-start
benchmark reads these INFO lines (formats as of 2026-11). Relayed runtime lines carry the runtime's own timestamp
after the replica name; that one is used, not the time the gateway relayed the line. Timestamps are local time
with millisecond resolution, on the same clock as ``time.time()`` in this process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

__all__ = ["REPLICA_READY", "LogLine", "find", "parse"]

_STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
_RELAYED = re.compile(rf"^{_STAMP} \S+\s+kaltstart\.local: \[([^\]]+)\] {_STAMP} \S+\s+(\S+): (.*)$")
_OWN = re.compile(rf"^{_STAMP} \S+\s+(\S+): (.*)$")

#: The gateway's line when its probe finds a replica ready; group 1 is the replica, group 2 its base URL.
REPLICA_READY = re.compile(r"replica (\S+) is ready at (http://\S+)")


@dataclass(frozen=True)
class LogLine:
    #: Unix time of the line (the runtime's own clock reading for relayed lines).
    at: float
    #: The replica a relayed runtime line came from (``tiny#0``); None for the gateway's own lines.
    replica: str | None
    logger: str
    message: str


def _epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse(text: str) -> Iterator[LogLine]:
    for line in text.splitlines():
        if relayed := _RELAYED.match(line):
            _gateway_stamp, replica, stamp, logger, message = relayed.groups()
            yield LogLine(_epoch(stamp), replica, logger, message)
        elif own := _OWN.match(line):
            stamp, logger, message = own.groups()
            yield LogLine(_epoch(stamp), None, logger, message)


def find(lines: list[LogLine], pattern: str, runtime: bool) -> tuple[LogLine, re.Match[str]] | None:
    """The first runtime (or gateway) line whose message matches ``pattern``."""
    compiled = re.compile(pattern)
    for line in lines:
        if (line.replica is not None) == runtime and (match := compiled.search(line.message)):
            return line, match
    return None
