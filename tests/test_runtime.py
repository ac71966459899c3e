"""The Jittor bootstrap: device choice, oneDNN wiring, clear errors, the doctor command."""
import os
import subprocess
import sys
import warnings

import pytest

import gdlib
from gdlib import runtime


def _run(code: str, **env) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=600)


def test_info_reports_backend_and_versions():
    rep = runtime.info()
    assert rep["backend"] in ("cpu", "cuda")
    assert rep["jittor_version"].startswith("1.")
    assert os.path.isdir(rep["cache_path"])
    assert isinstance(rep["onednn"], bool)
    # gdlib turns Jittor's parallel op compiler off (its threads crashed on cold caches) unless the user set it
    assert rep["parallel_op_compiler"] == int(os.environ.get("use_parallel_op_compiler", "0"))


def test_onednn_is_on_when_a_library_is_installed():
    if runtime._find_onednn() is None:
        pytest.skip("no oneDNN 2.x on this machine (pip install onednn-cpu-gomp onednn-devel-cpu-gomp)")
    if runtime.info()["backend"] != "cpu":
        pytest.skip("CUDA backend")
    assert runtime.info()["onednn"] is True


def test_jittor_runs_on_cpu_without_cuda_runtime():
    ok, why = runtime._cuda_usable()
    if ok:
        pytest.skip("this machine has a working CUDA")
    assert runtime.info()["backend"] == "cpu"
    assert os.environ.get("nvcc_path") == ""


def test_bad_device_value_is_a_clear_error():
    r = _run("import gdlib", GDLIB_DEVICE="tpu")
    assert r.returncode != 0
    assert "GDLIB_DEVICE='tpu'" in r.stderr and "'cpu', 'cuda'" in r.stderr


def test_asking_for_cuda_without_cuda_says_why():
    ok, _ = runtime._cuda_usable()
    if ok:
        pytest.skip("this machine has a working CUDA")
    r = _run("import gdlib", GDLIB_DEVICE="cuda")
    assert r.returncode != 0
    assert "CUDA is not usable here" in r.stderr and "Unset GDLIB_DEVICE" in r.stderr


def test_missing_onednn_warns_once_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "_STATE", {"configured": False, "onednn": False, "onednn_source": None,
                                            "device": None, "device_reason": "", "warnings": []})
    monkeypatch.setattr(runtime, "_find_onednn", lambda: None)
    monkeypatch.setattr(runtime, "_cuda_usable", lambda: (False, "test"))
    monkeypatch.setenv("JITTOR_HOME", str(tmp_path))  # no mkl folder there
    monkeypatch.setenv("use_mkl", "1")
    monkeypatch.setenv("nvcc_path", "")
    monkeypatch.delenv("GDLIB_NO_ONEDNN", raising=False)
    monkeypatch.delenv("GDLIB_DEVICE", raising=False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        runtime.configure()
        runtime.configure()  # idempotent: no second warning
    msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    assert len(msgs) == 1
    assert "160x slower" in msgs[0] and "onednn-cpu-gomp" in msgs[0]
    assert os.environ["use_mkl"] == "0"  # so Jittor does not try to download it


def test_wiring_creates_the_folder_jittor_looks_for(monkeypatch, tmp_path):
    found = runtime._find_onednn()
    if found is None:
        pytest.skip("no oneDNN 2.x on this machine")
    monkeypatch.setenv("JITTOR_HOME", str(tmp_path))
    monkeypatch.setenv("use_mkl", "1")
    monkeypatch.delenv("GDLIB_NO_ONEDNN", raising=False)
    ok, where = runtime._wire_onednn()
    assert ok, where
    root = tmp_path / ".cache" / "jittor" / "mkl" / runtime._jittor_mkl_dirname()
    assert (root / "lib" / "libmkldnn.so").resolve() == found[0].resolve()
    assert (root / "include" / "dnnl.hpp").exists()
    assert runtime._wire_onednn()[0]  # again: idempotent


def test_jittor_home_follows_the_home_jittor_remembered(monkeypatch, tmp_path):
    # Jittor writes JITTOR_HOME into ~/.cache/jittor/config.json once it was set, and keeps using it: so must we,
    # or oneDNN would be wired into a cache Jittor does not read.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("JITTOR_HOME", raising=False)
    assert runtime._jittor_home() == tmp_path
    (tmp_path / ".cache" / "jittor").mkdir(parents=True)
    (tmp_path / ".cache" / "jittor" / "config.json").write_text('{"JITTOR_HOME": "/somewhere/else"}')
    assert str(runtime._jittor_home()) == "/somewhere/else"
    monkeypatch.setenv("JITTOR_HOME", str(tmp_path / "env"))
    assert runtime._jittor_home() == tmp_path / "env"  # the variable wins, as in jittor_utils.home()
    (tmp_path / ".cache" / "jittor" / "config.json").write_text("not json")
    monkeypatch.delenv("JITTOR_HOME")
    assert runtime._jittor_home() == tmp_path


def test_doctor_command_passes():
    from gdlib.cli import main
    assert main(["doctor"]) == 0


def test_cli_unknown_command_is_exit_2(capsys):
    from gdlib.cli import main
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main([]) == 0


def test_kernel_compile_step_runs_in_a_subprocess_and_reports_failures(tmp_path, monkeypatch, capsys):
    """In a Jupyter kernel Jittor's compile commands run in gdlib/_jittor_compile.py, not in a Pool of the kernel."""
    import jittor_utils
    monkeypatch.setenv("log_sync", "1")  # as Jittor sets it in a notebook: the workers must not announce it
    monkeypatch.delenv("GDLIB_VERBOSE", raising=False)
    src = tmp_path / "add.cc"
    src.write_text("int add(int a, int b) { return a + b; }\n")
    obj = tmp_path / "add.o"
    cmd = f'"{jittor_utils.cc_path}" "{src}" -c -o "{obj}"'
    runtime._run_cmds_in_subprocess([cmd], jittor_utils.cache_path, str(tmp_path), "Compiling add")
    assert obj.is_file() and obj.stat().st_size > 0
    assert "log_sync" not in capsys.readouterr().out
    bad = f'"{jittor_utils.cc_path}" "{tmp_path / "missing.cc"}" -c -o "{tmp_path / "missing.o"}"'
    with pytest.raises(RuntimeError, match="could not build its libraries \\(Compiling missing"):
        runtime._run_cmds_in_subprocess([bad], jittor_utils.cache_path, str(tmp_path), "Compiling missing")


def test_jittor_imports_through_the_subprocess_compile_step_in_a_kernel():
    code = ("import sys, types; sys.modules['ipykernel'] = types.ModuleType('ipykernel')\n"
            "from gdlib import runtime\n"
            "jt = runtime.setup_jittor()\n"
            "import jittor_utils\n"
            "assert jittor_utils.run_cmds is runtime._run_cmds_in_subprocess\n"
            "print(int(jt.array([1, 2, 3]).sum().item()))\n")
    r = _run(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "6"


def test_no_smallest_subnormal_warning_after_jittor_loads():
    import subprocess
    import sys

    code = ("from gdlib import runtime; jt = runtime.setup_jittor(); import numpy as np; "
            "(jt.ones(3) * 2).sync(); print(np.finfo(np.float64).smallest_subnormal)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    from decimal import Decimal   # not float: this process runs with Jittor's flush-to-zero, where 5e-324 > 0 is False
    assert "smallest subnormal" not in out.stderr and Decimal(out.stdout.split()[-1]) > 0


def test_cli_version_and_one_line_errors(capsys, tmp_path):
    import gdlib
    from gdlib.cli import main

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"gdlib {gdlib.__version__}"
    # an argparse error: one line on stderr naming the command, exit 2 (not argparse's usage block)
    with pytest.raises(SystemExit) as e:
        main(["sample", "a cat", "--steps", "many"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("gdlib sample: error:")
    # bad input raised inside a command: one line, no traceback
    bad = tmp_path / "base.safetensors"
    bad.write_bytes(b"\x00" * 10)
    assert main(["sample", "a pixel painting of a cat", "--checkpoint", str(bad), "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gdlib sample: error:") and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_jittor_flag_announcement_is_dropped_and_other_output_kept():
    """Jittor prints `Load log_sync: 1` through its C++ logger when the variable is set (it sets it in notebooks)."""
    import os
    import subprocess
    import sys

    code = ("import os\nfrom gdlib import runtime\n"
            "with runtime._drop_fd_lines(b'Load log_sync'):\n"
            "    os.write(2, b'[i] Load log_sync: 1\\nkeep me\\n')\n    os.write(1, b'and me\\n')\n"
            "jt = runtime.setup_jittor()\nprint(int(jt.array([2, 3]).sum().item()))\n")
    env = {**os.environ, "log_sync": "1"}
    env.pop("GDLIB_VERBOSE", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Load log_sync" not in out.stdout + out.stderr
    assert "keep me" in out.stderr and out.stdout.split() == ["and", "me", "5"]
