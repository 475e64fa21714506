"""Replies on their way back to the client's gateway replica: the reply types (``messages``), their transport
over Redis pub/sub or in-process (``transport``), and the buffer that flushes tokens in batches (``buffer``).

May import: store and the top-level modules only.
"""
