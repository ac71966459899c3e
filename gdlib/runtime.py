"""Jittor bootstrap: pick CPU or CUDA, wire oneDNN, never download, keep the logs quiet.

This module must run before the first ``import jittor``; ``import gdlib`` does it for you.
Environment knobs:
  GDLIB_DEVICE=cpu|cuda   force the backend (default: CUDA only when a working runtime is found)
  GDLIB_VERBOSE=1         let Jittor print its own log lines
  GDLIB_NO_ONEDNN=1       skip oneDNN wiring (slow convolutions; for benchmarks)
"""
from __future__ import annotations

import ctypes
import glob
import os
import platform
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

_STATE: dict[str, Any] = {"configured": False, "onednn": False, "onednn_source": None,
                          "device": None, "device_reason": "", "warnings": []}

_ONEDNN_HINT = ("pip install onednn-cpu-gomp==2022.2.1 onednn-devel-cpu-gomp==2022.2.1 "
                "(or apt-get install libdnnl-dev)")


def _jittor_mkl_dirname() -> str:
    """The folder name Jittor looks for under ~/.cache/jittor/mkl (see jittor/compile_extern.py)."""
    suffix = "_aarch64" if platform.machine() == "aarch64" else ""
    return f"dnnl_lnx_2.2.0_cpu_gomp{suffix}"


def _jittor_home() -> Path:
    """Where Jittor keeps its caches, found as jittor_utils.home() finds it (without importing Jittor).

    $JITTOR_HOME first; else the home Jittor remembered in ~/.cache/jittor/config.json (Jittor writes it there
    whenever JITTOR_HOME was set once, and keeps using it afterwards); else the user's home."""
    if os.environ.get("JITTOR_HOME"):
        return Path(os.environ["JITTOR_HOME"]).absolute()
    try:
        import json
        remembered = json.loads((Path.home() / ".cache" / "jittor" / "config.json").read_text()).get("JITTOR_HOME")
    except (OSError, ValueError, AttributeError):
        remembered = None
    return Path(remembered) if remembered else Path.home()


def _find_onednn() -> tuple[Path, Path] | None:
    """Locate a oneDNN 2.x shared library and its headers; return (libdnnl.so.2, include dir)."""
    candidates = [
        (Path(sys.prefix) / "lib", Path(sys.prefix) / "include"),  # pip wheels onednn-*-gomp
        (Path(sys.base_prefix) / "lib", Path(sys.base_prefix) / "include"),
    ]
    for libdir in glob.glob("/usr/lib/*-linux-gnu") + ["/usr/lib", "/usr/local/lib"]:
        candidates.append((Path(libdir), Path("/usr/include")))  # Debian libdnnl-dev
    if os.environ.get("CONDA_PREFIX"):
        p = Path(os.environ["CONDA_PREFIX"])
        candidates.insert(0, (p / "lib", p / "include"))
    for libdir, incdir in candidates:
        lib = libdir / "libdnnl.so.2"
        if lib.exists() and (incdir / "dnnl.hpp").exists() and _onednn_major(incdir) == 2:
            return lib, incdir
    return None


def _onednn_major(incdir: Path) -> int:
    """Read DNNL_VERSION_MAJOR from dnnl_version.h (Jittor's ops need the 2.x API)."""
    hdr = incdir / "oneapi" / "dnnl" / "dnnl_version.h"
    if not hdr.exists():
        hdr = incdir / "dnnl_version.h"
    try:
        for line in hdr.read_text().splitlines():
            if line.startswith("#define DNNL_VERSION_MAJOR"):
                return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return -1


def _wire_onednn() -> tuple[bool, str]:
    """Make Jittor find oneDNN without downloading it; return (ok, where-or-why)."""
    if os.environ.get("GDLIB_NO_ONEDNN") == "1":
        os.environ["use_mkl"] = "0"
        return False, "disabled by GDLIB_NO_ONEDNN=1"
    mkl_root = _jittor_home() / ".cache" / "jittor" / "mkl" / _jittor_mkl_dirname()
    if (mkl_root / "lib" / "libmkldnn.so").exists() and not (mkl_root / "lib" / "libmkldnn.so").is_symlink():
        os.environ["use_mkl"] = "1"  # a genuine copy Jittor downloaded itself earlier
        return True, str(mkl_root)
    found = _find_onednn()
    if found is None:
        os.environ["use_mkl"] = "0"  # otherwise Jittor would try to download it
        return False, "no oneDNN 2.x found"
    lib, incdir = found
    try:
        (mkl_root / "lib").mkdir(parents=True, exist_ok=True)
        (mkl_root / "include").mkdir(parents=True, exist_ok=True)
        _symlink(lib, mkl_root / "lib" / "libmkldnn.so")
        for h in list(incdir.glob("dnnl*.h")) + list(incdir.glob("dnnl*.hpp")) + [incdir / "oneapi"]:
            if h.exists():
                _symlink(h, mkl_root / "include" / h.name)
        # The loader does not search sys.prefix/lib: load the library globally before Jittor's ops do.
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        os.environ["use_mkl"] = "0"
        return False, f"could not wire {lib}: {e}"
    os.environ["use_mkl"] = "1"
    return True, str(lib)


def _symlink(target: Path, link: Path) -> None:
    """Point link at target, replacing a stale link atomically."""
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    tmp = link.with_name(link.name + f".tmp{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _cuda_usable() -> tuple[bool, str]:
    """True when nvcc, the CUDA runtime library and a GPU driver are all present."""
    nvcc = os.environ.get("nvcc_path") or shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if not nvcc:
        return False, "no nvcc"
    cuda_home = Path(nvcc).resolve().parent.parent
    rt = glob.glob(str(cuda_home / "lib64" / "libcudart.so*")) + glob.glob(str(cuda_home / "lib" / "libcudart.so*"))
    if not rt:
        return False, f"nvcc at {nvcc} but no libcudart.so beside it"
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, "no CUDA driver (libcuda.so.1)"
    return True, f"nvcc at {nvcc}"


def configure() -> None:
    """Set Jittor's environment before its first import. Idempotent."""
    if _STATE["configured"]:
        return
    _STATE["configured"] = True
    if "jittor" in sys.modules:
        _STATE["warnings"].append("jittor was imported before gdlib; runtime settings may not apply")
    if os.environ.get("GDLIB_VERBOSE") != "1":
        os.environ.setdefault("log_silent", "1")
    # Jittor compiles the new ops of a graph from a pool of up to 16 threads (parallel_compiler.cc). Twice, with a
    # cold cache, one of those threads segfaulted ("thread_name: 'C5' ... Segfault happen, main thread exit"; in a
    # Jupyter kernel the same run ended in a corrupted interpreter). With the pool off those threads do not exist:
    # each new op compiles when it first runs (a cold tiny train-base took 77 s instead of 51 s; a warm cache costs
    # nothing).
    # Set use_parallel_op_compiler=16 in the environment to get Jittor's default back.
    os.environ.setdefault("use_parallel_op_compiler", "0")
    want = os.environ.get("GDLIB_DEVICE", "").strip().lower()
    if want not in ("", "auto", "cpu", "cuda"):
        raise ValueError(f"GDLIB_DEVICE={want!r}: use 'cpu', 'cuda' or leave it unset")
    ok, why = _cuda_usable()
    if want == "cuda" and not ok:
        raise RuntimeError(f"GDLIB_DEVICE=cuda but CUDA is not usable here ({why}). "
                           "Unset GDLIB_DEVICE to run on the CPU.")
    use_cuda = ok and want != "cpu"
    if not use_cuda:
        os.environ["nvcc_path"] = ""  # Jittor would otherwise die on a missing libcudart.so
    _STATE["device"] = "cuda" if use_cuda else "cpu"
    _STATE["device_reason"] = why if want in ("", "auto") else f"GDLIB_DEVICE={want}"
    onednn, where = _wire_onednn()
    _STATE["onednn"], _STATE["onednn_source"] = onednn, where
    if not onednn and not use_cuda and os.environ.get("GDLIB_NO_ONEDNN") != "1":
        warnings.warn(
            f"gdlib: oneDNN is not wired into Jittor ({where}). CPU convolutions will run about "
            f"160x slower than they should. Fix: {_ONEDNN_HINT}, then restart Python.",
            RuntimeWarning, stacklevel=3)


def _run_cmds_in_subprocess(cmds: list[str], cache_path: str, jittor_path: str, msg: str = "run_cmds") -> None:
    """Stand-in for ``jittor_utils.run_cmds``: the same compile commands, run by gdlib/_jittor_compile.py."""
    import json
    import subprocess
    request = json.dumps({"cmds": list(cmds), "cache_path": cache_path, "jittor_path": jittor_path,
                          "msg": msg, "sys_path": sys.path})
    helper = Path(__file__).with_name("_jittor_compile.py")
    env = os.environ.copy()
    env.pop("log_sync", None)  # set by Jittor in a notebook; each worker would announce it ("Load log_sync: 1")
    proc = subprocess.Popen([sys.executable, str(helper)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    proc.stdin.write(request)
    proc.stdin.close()
    verbose = os.environ.get("GDLIB_VERBOSE") == "1"
    lines = []
    for line in proc.stdout:  # Jittor's "Compiling ..." progress, shown as it comes; its info log only if verbose
        lines.append(line)
        if verbose or "[i " not in line:
            print(line, end="", flush=True)
    if proc.wait() != 0:
        tail = "".join(lines[-12:])
        raise RuntimeError(f"Jittor could not build its libraries ({msg}; exit status {proc.returncode}).\n"
                           f"{tail}\nRun `gdlib doctor` in a terminal for the full report.")


def _compile_outside_kernel() -> None:
    """In a Jupyter kernel, run Jittor's library compile step in a plain subprocess, not a Pool of the kernel.

    Every ``import jittor`` passes its core library's compile commands (cached: cheap when nothing changed) to a
    multiprocessing Pool of up to 16 workers. Forked from the threaded kernel (ZMQ, OpenMP) those workers once
    deadlocked on a copied lock. A plain Python subprocess is single-threaded, so Jittor's own fork Pool is safe
    there, and if it dies the kernel gets an error instead of a hang. Scripts and pytest keep Jittor's default.
    (A later hang, with the kernel idle and the client waiting, was ipykernel 7's: pyproject pins ipykernel<7.)"""
    if "ipykernel" not in sys.modules or "jittor" in sys.modules:
        return
    try:
        import jittor_utils
    except Exception:  # noqa: BLE001 - jittor itself will report what is wrong
        return
    if os.environ.get("DISABLE_MULTIPROCESSING", "0") != "1":  # Jittor's serial mode needs no help
        jittor_utils.run_cmds = _run_cmds_in_subprocess


def _cache_float_limits() -> None:
    """Compute NumPy's float limits before Jittor loads: its compiled libraries switch the CPU to flush denormals to
    zero, after which a first np.finfo(...) warns "The value of the smallest subnormal ... is zero" (once per
    process, on every command). finfo objects are cached, so computing them first keeps the true values and the
    warning away."""
    import numpy as np

    for t in (np.float16, np.float32, np.float64, np.longdouble, np.complex64, np.complex128):
        np.finfo(t)


class _drop_fd_lines:
    """Within the block, lines written to file descriptors 1 and 2 (C++ code writes there, not to sys.stdout) pass
    through a pipe and on to where they went before, live, except those containing `needle`."""

    def __init__(self, needle: bytes) -> None:
        self.needle, self.saved = needle, []

    def __enter__(self):
        import threading

        for fd in (1, 2):
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001 - a closed or odd stream must not stop the import
                    pass
            try:
                orig = os.dup(fd)
            except OSError:
                continue
            r, w = os.pipe()
            os.dup2(w, fd)
            os.close(w)

            def pump(r=r, orig=orig):
                with os.fdopen(r, "rb") as src:
                    for line in src:
                        if self.needle not in line:
                            os.write(orig, line)
            t = threading.Thread(target=pump, daemon=True, name=f"gdlib-fd{fd}-filter")
            t.start()
            self.saved.append((fd, orig, t))
        return self

    def __exit__(self, *exc):
        for fd, orig, t in self.saved:
            os.dup2(orig, fd)   # closes our end of the pipe: the pump sees EOF once every writer is gone
            t.join(timeout=5)
            if not t.is_alive():  # a child that inherited the pipe may keep it open: then leave orig to the pump
                os.close(orig)
        return False


def setup_jittor():
    """Import Jittor with gdlib's settings and return the module."""
    configure()
    if "jittor" not in sys.modules and os.environ.get("GDLIB_VERBOSE") != "1":
        # Jittor announces a flag set in the environment on import ("Load log_sync: 1": it sets log_sync itself in
        # every notebook), through its C++ logger, whatever log_silent says; that one line is dropped
        with _drop_fd_lines(b"Load log_sync"):
            return _import_jittor()
    return _import_jittor()


def _import_jittor():
    _compile_outside_kernel()
    _cache_float_limits()
    import jittor as jt
    jt.flags.use_cuda = 1 if _STATE["device"] == "cuda" else 0
    return jt


def info() -> dict[str, Any]:
    """Backend, oneDNN status, Jittor version and compile-cache path."""
    jt = setup_jittor()
    from jittor import compile_extern, compiler
    return {
        "backend": "cuda" if jt.flags.use_cuda else "cpu",
        "device_reason": _STATE["device_reason"],
        "onednn": getattr(compile_extern, "mkl_ops", None) is not None,
        "onednn_source": _STATE["onednn_source"],
        "jittor_version": jt.__version__,
        "cache_path": compiler.cache_path,
        "parallel_op_compiler": int(jt.flags.use_parallel_op_compiler),
        "python": platform.python_version(),
        "warnings": list(_STATE["warnings"]),
    }
