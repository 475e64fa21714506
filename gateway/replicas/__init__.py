"""What the gateway knows of each model's replicas: which are ready (``endpoints``), what they announce and
whether their own ``/readyz`` confirms it (``announcements``, ``readychecks``), how long cold starts take
(``coldstarts``), each model's context length (``context``), where pool replicas hold their models and what they
report (``residency``, ``poolreports``), and the HTTP client that talks to a replica
(``client``, used by dispatch and by the readiness checks alike).

May import: store and the top-level modules.
"""
