"""gdlib: the library behind the Guided DoRA course (Jittor)."""
from . import runtime as _runtime

_runtime.configure()

__version__ = "0.1.0"
