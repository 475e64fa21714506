"""The OpenAI API: what a client sees, from the HTTP request to its reply.

``routes`` (the Starlette endpoints) reads a body within ``bounds``, ``schemas`` and ``tools`` validate it,
``refusals`` turns what we do not honour into 400s, ``choices`` fans ``n`` and prompt lists out, ``admission``
admits -> enqueues -> ensures capacity -> awaits the result, and ``bodies`` shapes OpenAI response bodies and SSE
chunks. ``auth`` (API keys and their quotas), ``guards`` (port split) and ``serving`` (uvicorn with header, size
and keep-alive limits) guard the door.

May import: queue, relay, replicas, scaling, store and the top-level modules. Never a backend (the
``api-not-backends`` contract) nor the dispatch loop: requests reach replicas only through the queue.
"""
