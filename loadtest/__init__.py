"""kaltstart's load tests and benchmarks: ``python -m loadtest <command>``.

Commands (each prints a table, then one JSON object as its last line; ``--out DIR`` keeps CSVs and PNG plots):

- ``replay``: replay a request trace (the Azure LLM trace, or synthetic bursts) against a gateway.
- ``simulate``: feed a trace through the gateway's own scaling policy on a virtual clock.
- ``bench overhead``: the same echo runtime called directly and through the gateway, side by side.
- ``bench batching``: one runtime, the same requests in batches of 1 and of 16.
- ``bench coldstart``: one cold start from zero replicas, broken into phases.
- ``report``: the README's "Measure it" table from the archived summaries (``loadtest/results/``), one commit.
- ``gpu``: ``bench batching`` and ``bench coldstart`` with a ~1B-parameter random Llama on a CUDA machine.

See docs/loadtest.md.
"""
