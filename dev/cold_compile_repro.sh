#!/usr/bin/env bash
# Compile every gdlib fused op cold, N times, through notebook 02's tiny `gdlib train-base` (the run whose
# subprocess once segfaulted in Jittor's parallel op compiler). Before each run the compiled jt.code ops are
# deleted from Jittor's cache, so all of gdlib's kernels compile again; the rest of the cache stays warm.
# Usage: dev/cold_compile_repro.sh N            (use_parallel_op_compiler=16 dev/... to test Jittor's default)
# Run it alone on the machine; it prints one line per run: exit code, seconds, and whether a segfault was logged.
set -u
cd "$(dirname "$0")/.."
n=${1:-3}
py=${PYTHON:-.venv/bin/python}
jit="$("$py" -c 'import gdlib.runtime as r; print(r.info()["cache_path"])' | tail -1)/jit"
[ -d "$jit" ] || { echo "no Jittor cache at $jit" >&2; exit 1; }
for i in $(seq 1 "$n"); do
  rm -f "$jit"/code__*
  out=$(mktemp -d)
  start=$(date +%s)
  "$py" -m gdlib.cli train-base --out "$out" --steps 10 --minutes 10 --batch 8 --lr 2e-3 --warmup 5 \
    --n-per-pair 4 --base-channels 16 --channel-mult 1,2 --text-width 16 --text-layers 1 --sample-every 0 \
    --no-progress > "$out/log" 2>&1
  rc=$?
  echo "run $i: exit $rc, $(( $(date +%s) - start )) s, segfault lines: $(grep -c -i 'segfault' "$out/log")"
  rm -rf "$out"
done
