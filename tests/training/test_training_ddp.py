"""DDP through torchrun: 2 gloo processes on CPU train 2 steps and rank 0 writes one checkpoint.

Without batch norm (no coupling across the batch), 2 processes x batch 1 see the same image pairs
as 1 process x batch 2 (the sampler shards the same permutation) and average the same gradients,
so the weights must agree up to float summation order. Without the gradient all-reduce, rank 0
would follow its own images only and differ by a large fraction of the update.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import yaml
from training_helpers import TINY

from pixforge.training.checkpoint import GeneratorCheckpoint
from pixforge.training.config import config_from_dict
from pixforge.training.loop import train
from pixforge.training.registry import build_generator
from pixforge.training.runtime import seed_all


def test_two_process_gloo_run_matches_one_process_with_the_global_batch(aligned_data, tmp_path):
    # norm "none": conv biases in front of InstanceNorm have a zero true gradient, and Adam turns
    # their float noise into full +-lr steps that differ with summation order.
    raw = {
        **TINY["aligned"],
        "generator": {**TINY["aligned"]["generator"], "norm": "none"},
        "discriminator": {**TINY["aligned"]["discriminator"], "norm": "none"},
        "train": {
            "batch_size": 1,
            "num_workers": 0,
            "steps": 10,
            "progress": False,
            "tensorboard": False,
            "val_every": 0,
            "sample_every": 0,
        },
    }
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "pixforge.cli",
            "train",
            str(config),
            "--data",
            str(aligned_data),
            "--out",
            str(tmp_path / "ddp"),
            "--max-steps",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"checkpoint: {tmp_path / 'ddp' / 'checkpoints' / 'generator-step0000002.pt'}"
    assert sum(line.startswith("checkpoint: ") for line in lines) == 1  # rank 1 prints nothing
    assert [p.name for p in (tmp_path / "ddp" / "checkpoints").glob("generator-step*.pt")] == [
        "generator-step0000002.pt"
    ]
    ddp = GeneratorCheckpoint.load(tmp_path / "ddp" / "checkpoints" / "generator-step0000002.pt").state_dict

    single_cfg = config_from_dict({**raw, "train": {**raw["train"], "batch_size": 2}})
    single = train(single_cfg, aligned_data, run_dir=tmp_path / "single", max_steps=2)
    ref = GeneratorCheckpoint.load(single.checkpoint).state_dict
    seed_all(single_cfg.train.seed)
    init = build_generator(single_cfg.generator).state_dict()
    update = sum(float((ref[k] - init[k]).float().norm()) ** 2 for k in ref) ** 0.5
    gap = sum(float((ref[k] - ddp[k]).float().norm()) ** 2 for k in ref) ** 0.5
    assert update > 0 and gap < 1e-4 * update, (gap, update)  # measured ~1e-6; no all-reduce: ~0.8
    assert all(torch.isfinite(v).all() for v in ddp.values())
