"""Offline PyTorch training, export and evaluation of pix2pix / CycleGAN generators."""
