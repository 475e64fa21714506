"""How many replicas each model should have: the pure rules (``rules``), the adaptive keep-alive's pure rules
(``keepalive``) and its learned idle gaps kept in Redis (``gaps``), and the autoscaler that applies them through a
backend (``autoscaler``).

May import: backends, queue, replicas, store and the top-level modules; never dispatch or the API.
"""
