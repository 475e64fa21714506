"""The local backend: model replicas as ``python -m runtime`` processes on this machine, configured by a TOML
file (``config``), started, claimed from a standby and stopped by ``runtimes``, and scaled by ``backend``.
"""
