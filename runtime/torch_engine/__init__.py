"""The torch engine: a transformers model stepped batch by batch (``engine``, ``batch``), its paged KV cache
(``kvcache``), sampling and penalties (``sampling``), constrained decoding (``grammar``), prompt log-probabilities
(``prompt_logprobs``) and chat templates (``chat``).
"""
