#!/usr/bin/env bash
# Start or resume a testbed training in the background, one thread (see benchmarks/train_testbed.py's header).
#   bash benchmarks/train_testbed.sh vim_d12_mini                  # resumes from benchmarks/testbed_ckpt/vim_d12_mini/
#   bash benchmarks/train_testbed.sh plainmamba_d12_mini --device cuda --threads 4
#   PKG_REV=HEAD bash benchmarks/train_testbed.sh vim_d12_mini     # import the package as committed at HEAD
#                                                                   # (when the working tree is mid-edit)
# Stop with `kill <pid>` (SIGTERM: it saves a checkpoint after the current batch), then commit the folder:
#   git add benchmarks/testbed_ckpt/<name> && git commit -m 'testbed checkpoint'
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: train_testbed.sh NAME [train_testbed.py options]}
shift
dir=benchmarks/testbed_ckpt/$name
mkdir -p "$dir" output
if [[ -n "${PKG_REV:-}" ]]; then
  pkg=$(mktemp -d "${TMPDIR:-/tmp}/testbed_pkg.XXXXXX")
  git archive "$PKG_REV" timm_ssm_prune | tar -x -C "$pkg"
  export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
  echo "package: timm_ssm_prune from git $PKG_REV ($(git rev-parse --short "$PKG_REV")) in $pkg" >> "$dir/train.log"
fi
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} nohup .venv/bin/python benchmarks/train_testbed.py "$name" "$@" \
  >> "$dir/train.log" 2>&1 &
echo $! > "output/train_testbed_$name.pid"
echo "pid $! (also in output/train_testbed_$name.pid); log: $dir/train.log"
