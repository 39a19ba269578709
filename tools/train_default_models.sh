#!/usr/bin/env bash
# Reproduce the bundled default models (models/): train on CPU, export, and evaluate.
#
#   tools/train_default_models.sh DATA_ROOT [MODELS_DIR]
#
# DATA_ROOT holds `sr/` (train/ + test/ folders of HR photos: T91, BSD200 / Set5, Set14, BSD100).
# Step counts are the ones the shipped models were trained with on a 2-core CPU (see each card);
# raise them (and drop the --set overrides) for better models on a GPU.
set -euo pipefail
data=${1:?usage: tools/train_default_models.sh DATA_ROOT [MODELS_DIR]}
repo=${2:-models}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# Super-resolution x4, PSNR-oriented: L1 only (the adversarial phase never starts).
pixforge train training/configs/super_resolution_x4.yaml --data "$data/sr" --out runs/sr_x4 \
  --max-steps 5000 --set train.pretrain_steps=5000 --set train.steps=5000 --set train.num_workers=1 \
  --set train.batch_size=8 --set train.val_every=2500 --set train.checkpoint_every=1000 | tee /tmp/sr_x4.log
pixforge export "$(tail -n 1 /tmp/sr_x4.log | sed 's/^checkpoint: //')" --name sr-x4 --repo "$repo" \
  --description "x4 super-resolution (U-Net on bicubic, L1), CPU-trained default model"

# Colourisation (Lab, L -> ab), L1 phase only.
pixforge train training/configs/colorization.yaml --data "$data/sr" --out runs/colorization \
  --max-steps 4000 --set train.pretrain_steps=4000 --set train.steps=4000 --set train.num_workers=1 \
  --set train.val_every=2000 --set train.checkpoint_every=1000 | tee /tmp/colorization.log
pixforge export "$(tail -n 1 /tmp/colorization.log | sed 's/^checkpoint: //')" --name colorization --repo "$repo" --fp16 \
  --description "colourisation (U-Net, Lab L->ab, L1), CPU-trained default model"

pixforge models list --repo "$repo"
