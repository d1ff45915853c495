#!/usr/bin/env bash
# All speed benchmarks in one go, outputs saved under benchmarks/results/ (run on an otherwise idle machine:
# on 2 cores, two OpenMP threads slow down many times whenever another process is busy).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
PY=.venv/bin/python
{ lscpu | grep -E 'Model name|^CPU\(s\)'; free -g | head -2; } > benchmarks/results/machine.txt
$PY benchmarks/bench_scan.py | tee benchmarks/results/bench_scan.txt
$PY benchmarks/bench_pruning.py --repeats 3 --naive --json benchmarks/results/bench_pruning.json \
  | tee benchmarks/results/bench_pruning.txt
$PY benchmarks/bench_latency.py | tee benchmarks/results/bench_latency.txt
