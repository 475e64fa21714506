"""The runtime's HTTP face: the Starlette app (``app``: batches, cancels, readiness), its token and body-size
guard (``guard``), the start-up that loads the model or waits as a standby (``startup``), announcements to the
gateways (``announce``) and the test-only fault switch (``faults``).

Never imports torch (contract ``runtime-cheap-import``): the engine is built through ``runtime.engine.factory``,
whose torch import happens when a real model loads.
"""
