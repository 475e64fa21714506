"""Every Redis key and channel the gateway uses, in one place.

All keys of one model share the hash tag ``{m:<model>}``, so that a script touching one model's keys stays in one
Redis Cluster slot. An API key's account (``{k:<account>}``) is in another slot: on one Redis the enqueue and settle
scripts charge it with the model's keys; on a Redis Cluster it is charged by scripts of its own
(``gateway.queue.keycharges``). Channels are not keys: classic pub/sub reaches every node of a cluster.
"""

from __future__ import annotations

PREFIX = "kaltstart"

#: The consumer group every gateway replica's dispatchers read through.
GROUP = "dispatchers"


def _model(model: str) -> str:
    return f"{PREFIX}:{{m:{model}}}"


def queue(model: str) -> str:
    """Stream of queued requests, one entry per choice (fields ``q``: a ``QueuedEntry``, ``b`` and ``p``: its
    request body's id and prompt, ``i``: its request id; an older gateway's entry has ``r``, a whole
    ``QueuedRequest``). Entries are deleted once settled, so ``XLEN`` is queued + in flight, and the group's
    pending count is in flight."""
    return f"{_model(model)}:queue"


def activity(model: str) -> str:
    """Server time in ms of the model's last enqueue or settle: what "idle for" is measured from."""
    return f"{_model(model)}:activity"


def settled(model: str, request_id: str) -> str:
    """Set (NX) by whoever settles a request first: its final reply, or ``cancelled``. Guards against a
    request being answered twice, and lets a gateway read a final reply it missed on pub/sub."""
    return f"{_model(model)}:settled:{request_id}"


def body(model: str, body_id: str) -> str:
    """Hash of one client request's prompts, stored once however many choices it has (fields ``0``, ``1``...: a
    ``GenerationRequest`` per prompt; ``left``: choices not settled yet; ``m``: its charge in the accounts). Deleted
    with its last choice's settle; expires at the request's deadline otherwise (``gateway.queue.budget``)."""
    return f"{_model(model)}:body:{body_id}"


def model_held(model: str) -> str:
    """Sorted set of the charges (``<body id>|<entries>|<bytes>``) of the model's unanswered requests, scored by
    their deadline in ms: a charge nobody released lapses then."""
    return f"{_model(model)}:held"


def model_usage(model: str) -> str:
    """Hash of the sums of the model's held charges: ``requests``, ``entries``, ``bytes``."""
    return f"{_model(model)}:usage"


def _account(account: str) -> str:
    return f"{PREFIX}:{{k:{account}}}"


def key_held(account: str) -> str:
    """``model_held`` of one API key's account (over every model); ``account`` is a hash of the key."""
    return f"{_account(account)}:held"


def key_usage(account: str) -> str:
    """``model_usage`` of one API key's account."""
    return f"{_account(account)}:usage"


def context_length(model: str) -> str:
    """The model's context length in tokens, as a ready replica reported it."""
    return f"{_model(model)}:context-length"


def cold_start(model: str) -> str:
    """Seconds from scale-up to ready of the model's recent cold starts, smoothed (``gateway.replicas.coldstarts``)."""
    return f"{_model(model)}:cold-start"


def idle_gaps(model: str) -> str:
    """List of the model's recent idle gaps in ms, oldest first, trimmed to a window (``gateway.scaling.gaps``)."""
    return f"{_model(model)}:idle-gaps"


def fence(model: str) -> str:
    """Held while a scale-down of the model is being written: new requests wait at the door until it is lifted,
    so a model is never scaled to zero with a request in its queue."""
    return f"{_model(model)}:fence"


#: Pub/sub channel on which a lifted fence is announced (the message is the model name).
FENCES = f"{PREFIX}:fences"

#: Pub/sub channel on which a cancelled request is announced (a ``CancelNotice``), so that the dispatcher running
#: it tells its runtime replica to stop.
CANCELS = f"{PREFIX}:cancels"


def gateway(gateway_id: str) -> str:
    """Exists while the gateway replica is alive (a heartbeat with a TTL)."""
    return f"{PREFIX}:gateway:{gateway_id}"


def replies(gateway_id: str) -> str:
    """Pub/sub channel on which dispatchers send a request's replies to the gateway replica holding its client."""
    return f"{PREFIX}:replies:{gateway_id}"


#: Pub/sub channel on which new work is announced (``<gateway id>\n<taken>\n<model>``, ``taken`` 0 or 1: written by
#: ``gateway.queue.signals.message``, which says what each part means), so that dispatchers wait for work without
#: holding a Redis connection each.
WORK = f"{PREFIX}:work"


#: Hash of the served model names' owners: model name -> ``<namespace>/<name>/<uid>`` of the Deployment that serves
#: it (Kubernetes backend, ``gateway.backends.kubernetes.owners``). Set if absent when a gateway first decides an
#: owner, deleted (if it still names that owner) when the owner drops the name; every gateway honours it.
ROUTE_OWNERS = f"{PREFIX}:route-owners"
