"""The engine seam: the interface both engines implement (``interface``), the one decoding loop over a step
engine (``stepping``), the echo engine (``echo``, no torch) and the ``factory`` that builds the engine a settings
object names (importing the torch engine only then).
"""
