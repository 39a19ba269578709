"""Offline PyTorch training, export and evaluation of pix2pix / CycleGAN generators.

Folder -> import name: `training/` is installed as `pixforge.training` (setup.py); its modules import
each other relatively and everything else as `pixforge.x` (docs/architecture.md).
"""
