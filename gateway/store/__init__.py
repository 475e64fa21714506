"""Redis itself: the connection pool (``connection``), every key and channel name (``keys``), auto-pipelined
script calls (``pipelining``) and the embedded Valkey of ``make run`` (``embedded``).

The bottom layer of the gateway: imports only the top-level ``errors``, ``settings`` and ``processes``.
"""
