"""Write one half of every A|B pair image as its own PNG (see pixforge.training.data.pair_halves).

    python tools/pair_halves.py DATA/facades/train OUT/facades-train --half A

A is the left half (the facades photo), B the right.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pixforge.errors import PixforgeError
from pixforge.training.data.pair_halves import HALVES, write_pair_halves


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="folder of A|B pair images (searched recursively)")
    ap.add_argument("out", type=Path, help="folder to write the halves to (sub-folders are kept)")
    ap.add_argument("--half", choices=HALVES, required=True, help="A = left half, B = right half")
    args = ap.parse_args(argv)
    try:
        count = write_pair_halves(args.src, args.out, args.half)
    except PixforgeError as exc:
        print(f"pair_halves: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {count} image(s) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
