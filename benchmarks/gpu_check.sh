#!/usr/bin/env bash
# The GPU check of issue 16, one prepared run that fits in 6 minutes on one GPU:
#   bash benchmarks/gpu_check.sh [OUTDIR] [--smoke]
# OUTDIR defaults to $OUT, else ./gpu_check_out. Results: OUTDIR/gpu_check.txt (readable, appended as they come)
# and OUTDIR/gpu_check_<section>.json. Each section (see benchmarks/gpu_check.py) runs in its own process
# under a hard time box; a failing or timed-out section is recorded and the next one runs.
# Needs PyTorch (CUDA build), Triton and timm; installs nothing except, if this package does not import from
# the source tree, `pip install --no-deps -e .`. mamba-ssm is timed too when it imports.
# --smoke: tiny sizes on CPU through Triton's interpreter (checks that the script runs; measures nothing).
set -u
cd "$(dirname "$0")/.."

OUTDIR=
SMOKE=
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=--smoke ;;
    *) OUTDIR=$arg ;;
  esac
done
OUTDIR=${OUTDIR:-${OUT:-gpu_check_out}}
mkdir -p "$OUTDIR"

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
if [ -n "$SMOKE" ]; then
  export TRITON_INTERPRET=1   # must be set before triton is imported: the kernels run on CPU tensors
  export OMP_NUM_THREADS=1
fi

if ! "$PY" -c 'import timm_ssm_prune' 2>/dev/null; then
  echo "timm_ssm_prune does not import from the source tree; pip install --no-deps -e ." | tee -a "$OUTDIR/gpu_check.txt"
  "$PY" -m pip install -q --no-deps -e . 2>&1 | tail -3 | tee -a "$OUTDIR/gpu_check.txt"
fi

# section:seconds (hard box; the script's own soft box is 10 s shorter). Sum 345 s + process starts.
if [ -n "$SMOKE" ]; then
  PLAN="env:60 scan_parity:120 scan_bench:120 model_parity:240 throughput:240"
else
  PLAN="env:25 scan_parity:60 scan_bench:80 model_parity:70 throughput:110"
fi
echo "gpu_check $(date -u +%FT%TZ) ${SMOKE:-full} -> $OUTDIR" | tee -a "$OUTDIR/gpu_check.txt"
for item in $PLAN; do
  section=${item%%:*}
  secs=${item##*:}
  start=$(date +%s)
  timeout -k 5 "$secs" "$PY" benchmarks/gpu_check.py --section "$section" --out "$OUTDIR" \
      --budget $((secs - 10)) $SMOKE
  rc=$?
  took=$(( $(date +%s) - start ))
  if [ $rc -ne 0 ]; then
    echo "section $section: exit status $rc after ${took} s$( [ $rc -ge 124 ] && echo ' (time box)')" \
      | tee -a "$OUTDIR/gpu_check.txt"
  else
    echo "section $section: done in ${took} s" | tee -a "$OUTDIR/gpu_check.txt"
  fi
done
exit 0
