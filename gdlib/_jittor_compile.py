"""Run one batch of Jittor's library compile commands in a plain Python process.

gdlib.runtime starts this file (by path, so the gdlib package is not imported) from a Jupyter kernel, where
Jittor's own multiprocessing Pool must not be created: see ``runtime._compile_outside_kernel``. The request
(commands, cache path, Jittor path, message, sys.path) arrives as JSON on stdin; Jittor's progress lines go to
stdout; the exit status says whether every command succeeded.
"""
import json
import sys


def main() -> int:
    request = json.load(sys.stdin)
    for path in request["sys_path"]:  # the Jittor cache directory holds jit_utils_core
        if path not in sys.path:
            sys.path.append(path)
    import jittor_utils
    jittor_utils.run_cmds(request["cmds"], request["cache_path"], request["jittor_path"], request["msg"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
