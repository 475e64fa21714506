"""The durable queue: one Redis Stream per model, and the rules that make every request answered exactly once.

``stream`` (``RequestQueue``: enqueue, read, settle, cancel, redeliver) runs the Lua ``scripts``; ``budget``
charges and releases the byte and per-key accounts; ``fence`` keeps a model from scaling to zero with a request
queued; ``signals`` wakes the dispatcher that should read; ``recovery`` (the janitor) takes over what a dead
gateway left pending.

May import: relay, store and the top-level modules; nothing that dispatches, scales or serves HTTP.
"""
