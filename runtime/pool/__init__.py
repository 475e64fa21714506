"""A pool runtime's models (``python -m runtime --pool``): which are active, parked or absent, and the moves between.

``policy`` decides (pure: budgets and least-recently-used order); ``models`` holds the models and carries the moves
out on its own thread. Below the server, above the engines and schedulers.
"""
