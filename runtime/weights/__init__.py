"""Model weights: the node-local cache (``cache``), the safetensors reader at disk speed (``reader``), the direct
load that builds a model from it (``fastload``) and the tiny random demo model of tests and ``make run``
(``demo_model``).
"""
