"""`pixforge eval`: compute a served model's quality metrics over a folder (see training/model_eval/).

Prints a Markdown table (the format of the model cards in models/*/README.md); with `--out DIR`
also writes results.json, per_image.csv and samples.png there. Bad input (unknown model, empty or
wrongly laid out folder, unreachable server) is one `pixforge eval: error: ...` line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pixforge.errors import PixforgeError

from .model_eval import EvalOptions, evaluate, markdown, open_runner, write_outputs


def _header(info, data: str, reverse, render_size: int = 0) -> str:
    line = f"{info.name} v{info.version} ({info.task}" + (f", x{info.scale}" if info.scale > 1 else "") + ")"
    line += f" on {data} — {info.location} ({info.metadata.get('precision', 'fp32')}), {info.provider}"
    if info.task == "colorization" and render_size:
        line += f", rendered at <= {render_size} px"
    if reverse is not None:
        line += f"; reverse model {reverse.name} v{reverse.version}"
    return line


def _check_out(out: Path, data: Path) -> None:
    """Refuse an --out the evaluation cannot use, before it runs."""
    if out.exists() and not out.is_dir():
        raise PixforgeError(f"--out {out} is a file; name a folder")
    if out.resolve().is_relative_to(data.resolve()):
        # its samples.png would be read as a test image by the next evaluation of that folder
        raise PixforgeError(f"--out {out} is inside the data folder {data}; write the results elsewhere")


# counts a task keeps for images it leaves out on purpose -> what that means, for the error line
LEFT_OUT = {"skipped_grayscale": "grayscale photo(s) left out, no colours to recover"}


def _nothing_evaluated(report, data: str) -> str:
    """The one-line error when no image could be measured: how many were skipped and why.

    The report's notes describe a table that is not printed; they stay out of this line.
    """
    skipped = report.extra.get("skipped", [])
    why = [f"{len(skipped)} skipped"]
    if skipped:
        why.append(f"first: {skipped[0]['file']}: {skipped[0]['reason']}")
    why += [f"{report.counts[key]} {text}" for key, text in LEFT_OUT.items() if report.counts.get(key)]
    return f"no image in {data} could be evaluated ({'; '.join(why)})"


def run(args: argparse.Namespace) -> int:
    """Entry point of `pixforge eval`; returns the exit code."""
    runners = []
    try:
        options = EvalOptions(
            max_images=getattr(args, "max_images", None) or 0,
            source=getattr(args, "source", None),
            classifier_steps=getattr(args, "classifier_steps", None) or 300,
        )
        if not Path(args.data).is_dir():
            raise PixforgeError(f"data folder {args.data} does not exist or is not a folder")
        if args.out:
            _check_out(Path(args.out), Path(args.data))
        location = {"repo": getattr(args, "repo", None), "server": getattr(args, "server", None)}
        runner = open_runner(
            args.model,
            version=getattr(args, "version", None),
            render_size=getattr(args, "render_size", None) or 0,
            precision=getattr(args, "precision", None),
            **location,
        )
        runners.append(runner)
        reverse = None
        if getattr(args, "reverse_model", None):
            reverse = open_runner(args.reverse_model, **location)
            runners.append(reverse)
        report = evaluate(runner, args.data, options, reverse)
        if not report.counts.get("images"):
            # An empty table with exit 0 reads as a result; a script must see the failure.
            raise PixforgeError(_nothing_evaluated(report, args.data))
        render = getattr(runner, "render_size", 0)
        print(_header(runner.info, args.data, reverse.info if reverse else None, render))
        print()
        print(markdown(report), end="")
        if args.out:
            written = write_outputs(
                report, Path(args.out), runner.info, Path(args.data), reverse.info if reverse else None
            )
            print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
        return 0
    except (PixforgeError, OSError) as exc:
        print(f"pixforge eval: error: {exc}", file=sys.stderr)
        return 2
    finally:
        for r in runners:
            r.close()
