#!/usr/bin/env bash
# Reproduce the Animal-MNIST weights shipped in timm_ssm_prune/weights/ (the demo's embedded default and the
# base models of benchmarks/paper_tables.py). Runs both trainings in parallel, one thread each (2-core machine).
#   bash benchmarks/train_animal_mnist.sh            # 6 epochs each, about 40-50 min on 2 CPU cores
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-6}
OUT=${OUT:-output/animal_mnist}
common=(--data-dir animal-mnist --epochs "$EPOCHS" --lr 2e-3 --weight-decay 0.05 -b 64 --warmup-epochs 1
        --scale 0.6 1.0 --hflip 0.5 --smoothing 0.1 --drop-path 0.05 --seed 0 --no-progress)
for model in plainmamba_mini vim_mini; do
  OMP_NUM_THREADS=1 .venv/bin/timm-ssm-prune train --model "$model" "${common[@]}" --output "$OUT" --experiment "$model" \
    --save-safetensors "timm_ssm_prune/weights/$model.animal_mnist.safetensors" > "$OUT.$model.log" 2>&1 &
done
wait
tail -n 3 "$OUT".*.log
