"""Fault injection for the gateway's failure tests (``--fault-exit-on``): never set in production.

A real replica dies without warning (OOM killer, node loss, a CUDA fault), in the middle of whatever it holds. The
gateway must notice and put the requests back on the queue; its tests make that happen on demand by sending a
request whose text carries a marker. ``os._exit`` skips every cleanup (no graceful shutdown, no closing of
connections), so the gateway sees what a crash looks like.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from wire import GenerationRequest

__all__ = ["FAULT_EXIT_STATUS", "exit_if_triggered", "triggers"]

FAULT_EXIT_STATUS = 70  # EX_SOFTWARE in sysexits.h; distinct from 1 (failed load) and 2 (bad flags)

log = logging.getLogger(__name__)


def triggers(request: GenerationRequest, marker: str) -> bool:
    """Whether the request's prompt, or the text of one of its chat messages, contains ``marker``."""
    texts = [request.prompt] if request.prompt is not None else [m.content or "" for m in request.messages or ()]
    return any(marker in text for text in texts)


def exit_if_triggered(requests: Sequence[GenerationRequest], marker: str | None) -> None:
    """Exit the process at once with ``FAULT_EXIT_STATUS`` if a request triggers ``marker``; no-op if unset."""
    if not marker:
        return
    culprit = next((r.id for r in requests if triggers(r, marker)), None)
    if culprit is None:
        return
    log.error("fault injection: request %s contains %r; exiting with status %d", culprit, marker, FAULT_EXIT_STATUS)
    for handler in logging.getLogger().handlers:  # os._exit flushes nothing; keep the line for the test's log
        handler.flush()
    os._exit(FAULT_EXIT_STATUS)
