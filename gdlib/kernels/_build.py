"""Shared plumbing for the fused ops: OpenMP header, compile probe, warn-once fallback to the reference."""
from __future__ import annotations

import warnings
from typing import Callable

from .. import runtime

jt = runtime.setup_jittor()

# Jittor 1.3.11 builds jt.code sources with its cc_flags, which carry -fopenmp (see jt.flags.cc_flags):
# `#pragma omp parallel for` in cpu_src runs on all cores of the OpenMP runtime that oneDNN also uses.
CPU_HEADER = "#include <omp.h>\n#include <cmath>\n"
CUDA_HEADER = "#include <cmath>\n"

# Below this much work an op runs on one thread: waking a second OpenMP thread costs more than it saves, and
# on a busy machine the wake-up can wait for a whole scheduler slice (measured: 10-30 ms at load 5 on 2 cores).
PARALLEL_MIN_ELEMENTS = 1 << 17  # elementwise/normalization kernels: tensor elements
PARALLEL_MIN_MACS = 1 << 22      # attention: multiply-adds of one Q K^T

_STATUS: dict[tuple[str, int], bool] = {}


def device_key() -> int:
    """1 when Jittor runs on CUDA, else 0 (a kernel probes each backend once)."""
    return int(bool(jt.flags.use_cuda))


def fused_ok(name: str, probe: Callable[[], None]) -> bool:
    """Compile and run the fused op `name` once on a tiny input; on failure warn once and return False."""
    key = (name, device_key())
    if key not in _STATUS:
        try:
            with jt.flag_scope(no_grad=0):
                probe()
            _STATUS[key] = True
        except Exception as e:  # noqa: BLE001 - any compile/run failure means: use the reference
            _STATUS[key] = False
            msg = str(e).strip().splitlines()
            warnings.warn(f"gdlib.kernels: the fused {name} op failed to compile or run "
                          f"({msg[-1] if msg else type(e).__name__}); using the plain-Jittor reference instead.",
                          RuntimeWarning, stacklevel=3)
    return _STATUS[key]


def status() -> dict[str, bool]:
    """Which fused ops compiled on which backend, e.g. {'group_norm/cpu': True}."""
    return {f"{n}/{'cuda' if d else 'cpu'}": ok for (n, d), ok in _STATUS.items()}
