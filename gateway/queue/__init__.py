"""The durable queue: one Redis Stream per model, and the rules that make every request answered exactly once.

``stream`` (``RequestQueue``: enqueue, read, settle, cancel, redeliver) runs the Lua ``scripts``; ``budget``
charges and releases the byte and per-key accounts; ``fence`` keeps a model from scaling to zero with a request
queued; ``signals`` wakes the dispatcher that should read; ``recovery`` (the janitor and its ``Takeover``) takes
over what a dead gateway left pending. The batching window is the dispatcher's (``gateway.dispatch.window``).

May import: relay, store and the top-level modules; nothing that dispatches, scales or serves HTTP.
"""
