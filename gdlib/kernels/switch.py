"""The single switch between fused kernels and plain-Jittor references."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

_ENABLED = os.environ.get("GDLIB_KERNELS", "1") != "0"


def use_kernels(flag: bool) -> None:
    """Select the fused-kernel path (True, default) or the reference path (False) globally."""
    global _ENABLED
    _ENABLED = bool(flag)


def kernels_on() -> bool:
    """Whether the fused-kernel path is selected."""
    return _ENABLED


@contextlib.contextmanager
def kernels_enabled(flag: bool) -> Iterator[None]:
    """Scope the switch: `with kernels_enabled(False): ...` runs the references."""
    old = _ENABLED
    use_kernels(flag)
    try:
        yield
    finally:
        use_kernels(old)
