"""Blend two generator checkpoints (network interpolation; see pixforge.training.blend).

    python tools/blend_generators.py PSNR.pt GAN.pt --alpha 0.5 --out blend.pt

Prints `checkpoint: PATH` last, like `pixforge train`, so the result pipes into `pixforge export`.
"""

from __future__ import annotations

import argparse
import sys

from pixforge.training.blend import save_blend


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="checkpoint A (alpha = 0), e.g. the PSNR-oriented model")
    ap.add_argument("b", help="checkpoint B (alpha = 1), e.g. its adversarial fine-tune")
    ap.add_argument("--alpha", type=float, required=True, help="weight of B in [0, 1]")
    ap.add_argument("--out", required=True, help="output checkpoint path")
    args = ap.parse_args(argv)
    try:
        path = save_blend(args.a, args.b, args.alpha, args.out)
    except (OSError, ValueError) as exc:
        print(f"blend_generators: error: {exc}", file=sys.stderr)
        return 2
    print(f"checkpoint: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
