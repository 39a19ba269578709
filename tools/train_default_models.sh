#!/usr/bin/env bash
# Reproduce the bundled default models (models/): train on CPU, export, and evaluate.
#
#   tools/train_default_models.sh DATA_ROOT [MODELS_DIR]
#
# DATA_ROOT holds `sr/` (train/ + test/ folders of HR photos: T91, BSD200 / Set5, Set14, BSD100) and
# `apple2orange/` (trainA, trainB, testA, testB) and `facades/` (train, test: A|B pairs). Each model's card (models/<name>/README.md) says
# which lines below made it and what `pixforge eval` measured.
# Step counts are the ones the shipped models were trained with on a 2-core CPU (see each card);
# raise them (and drop the --set overrides) for better models on a GPU.
set -euo pipefail
data=${1:?usage: tools/train_default_models.sh DATA_ROOT [MODELS_DIR]}
repo=${2:-models}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# Super-resolution x4, PSNR-oriented: the LR-space residual network of the preset (edsr, width 24,
# 6 blocks), L1 only (pretrain_steps = steps: no discriminator ever trains), 10000 steps of 32 LR
# patches of 32x32. (The shipped run was started with steps 16000 and resumed at step 2000 with
# --set train.steps=10000 --set train.pretrain_steps=10000: the cosine schedule follows the new length.)
pixforge train training/configs/super_resolution_x4.yaml --data "$data/sr" --out runs/sr_x4 \
  --set train.steps=10000 --set train.pretrain_steps=10000 | tee /tmp/sr_x4.log
# --int8 adds model.int8.onnx, calibrated and judged on the first 16 BSD200 training photos; the
# export times it against fp32 and records the speed-up, which a CPU server follows.
pixforge export "$(tail -n 1 /tmp/sr_x4.log | sed 's/^checkpoint: //')" --name sr-x4 --repo "$repo" --tile-size 512 \
  --int8 --calibration "$data/sr/train/BSD200" \
  --description "x4 super-resolution (LR-space residual net, L1), CPU-trained default model"

# Colourisation (Lab, L -> ab): no-norm U-Net, Huber, native-resolution crops of the sr/train
# photos plus the facades photos (the A halves of facades train + val: walls, so bright smooth
# surfaces are not all sky; see models/colorization/README.md); validated on sr/test.
colour_data=runs/colorization_data
abs_data=$(cd "$data" && pwd)
mkdir -p "$colour_data/train"
ln -sfn "$abs_data/sr/train" "$colour_data/train/sr"
ln -sfn "$abs_data/sr/test" "$colour_data/test"
python tools/pair_halves.py "$data/facades/train" "$colour_data/train/facades/train" --half A
python tools/pair_halves.py "$data/facades/val" "$colour_data/train/facades/val" --half A
pixforge train training/configs/colorization.yaml --data "$colour_data" --out runs/colorization | tee /tmp/colorization.log
pixforge export "$(tail -n 1 /tmp/colorization.log | sed 's/^checkpoint: //')" --name colorization --repo "$repo" \
  --tile-size 512 --int8 --calibration "$data/sr/train/BSD200" \
  --description "colourisation (U-Net without normalisation, Lab L->ab, Huber, native-resolution crops of sr/train and facades photos), CPU-trained default model"

# Super-resolution x4, GAN (NoGAN style): the sr_x4 run's state at step 10000 continued for 2000
# adversarial steps (L1 + 0.1 LSGAN, PatchGAN, lr 1e-4, 16x16 LR crops), then blended 0.8 toward
# the GAN generator (alpha chosen on the first 30 BSD100 images; see models/sr-x4-gan/README.md).
rm -rf runs/sr_x4_gan && mkdir -p runs/sr_x4_gan && cp -r runs/sr_x4/checkpoints runs/sr_x4/config.json runs/sr_x4_gan/
pixforge train training/configs/super_resolution_x4.yaml --data "$data/sr" --out runs/sr_x4_gan --resume \
  --set train.steps=12000 --set train.pretrain_steps=10000 --set train.lambda_gan=0.1 --set train.gan_mode=lsgan \
  --set train.lr_g=1e-4 --set train.lr_d=1e-4 --set train.lr_schedule=linear --set train.lr_decay_start=0.9 \
  --set data.crop_size=64 --set train.checkpoint_every=250 --set train.val_every=250 | tee /tmp/sr_x4_gan.log
python tools/blend_generators.py runs/sr_x4/checkpoints/generator-step0010000.pt \
  runs/sr_x4_gan/checkpoints/generator-step0012000.pt --alpha 0.8 --out runs/sr_x4_gan/blend-alpha0.8.pt
pixforge export runs/sr_x4_gan/blend-alpha0.8.pt --name sr-x4-gan --repo "$repo" --tile-size 512 \
  --description "x4 super-resolution, perceptual variant (LR-space residual net: L1 pre-training + LSGAN fine-tune, blended 0.8 toward the GAN), CPU-trained default model"

# Style translation, CycleGAN apple <-> orange (ResNet ngf 16, 6 blocks, resize-conv upsampling,
# 128 crops, identity weight 0.25: see models/apple2orange/README.md), 7000 steps. The tile sizes
# are given (512 / 256, measured before the sub-pixel rewrites; see the cards): the per-pixel
# measurement ignores tile overlap, and the faster graph would pick 128 px tiles.
pixforge train training/configs/style_translation.yaml --data "$data/apple2orange" --out runs/a2o \
  --set train.steps=7000 --set train.num_workers=1 --set train.checkpoint_every=1000 \
  --set train.val_every=2500 --set train.lambda_identity=0.25 | tee /tmp/a2o.log
pixforge export runs/a2o/checkpoints/G_A-step0007000.pt --name apple2orange --repo "$repo" --tile-size 512 \
  --description "style translation apple -> orange (CycleGAN G_A), CPU-trained default model"
pixforge export runs/a2o/checkpoints/G_B-step0007000.pt --name orange2apple --repo "$repo" --tile-size 256 \
  --description "style translation orange -> apple (CycleGAN G_B), CPU-trained default model"

# Paired translation demo: facade labels -> photo (pix2pix, resize-conv upsampling), 8000 steps.
pixforge train training/configs/facades.yaml --data "$data/facades" --out runs/facades \
  --set train.steps=8000 --set train.num_workers=1 --set train.val_every=4000 \
  --set train.checkpoint_every=1000 | tee /tmp/facades.log
pixforge export "$(tail -n 1 /tmp/facades.log | sed 's/^checkpoint: //')" --name facades --repo "$repo" --tile-size 512 \
  --description "paired translation: facade labels -> photo (pix2pix U-Net with resize-conv upsampling + PatchGAN), CPU-trained demo model"

pixforge models list --repo "$repo"
# Re-measure every card (needs the data; see docs/training.md "Evaluating a model").
pixforge eval --repo "$repo" --model sr-x4 --data "$data/sr/test"
pixforge eval --repo "$repo" --model sr-x4 --precision int8 --data "$data/sr/test"
pixforge eval --repo "$repo" --model sr-x4-gan --data "$data/sr/test"
pixforge eval --repo "$repo" --model colorization --data "$data/sr/test"
pixforge eval --repo "$repo" --model colorization --precision int8 --data "$data/sr/test"
pixforge eval --repo "$repo" --model facades --data "$data/facades/test"
pixforge eval --repo "$repo" --model apple2orange --reverse-model orange2apple --data "$data/apple2orange" --classifier-steps 800
