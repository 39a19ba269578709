"""The `pixforge` command: one entry point, one subcommand per user journey.

Argument parsing lives here so `pixforge --help` is fast and imports nothing heavy; each
subcommand's implementation is imported only when it runs (training and export import torch,
serving and converting never do). Flag names are a public interface: scripts outside this
repository call them.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import select
import sys

from pixforge import __version__

# subcommand -> "module:function" taking the parsed argparse.Namespace and returning an exit code.
COMMANDS = {
    "train": "pixforge.training.train_cli:run",
    "export": "pixforge.training.export_cli:run",
    "eval": "pixforge.training.eval_cli:run",
    "serve": "pixforge.service.server:run",
    "convert": "pixforge.clients.convert:run",
    "models": "pixforge.models_cli:run",
    "health": "pixforge.clients.health:run",
    "bench": "pixforge.bench:run",
}

# `pip install pixforge` is the client library and the client commands (convert through a server,
# health); the rest needs an extra. Top-level module -> the extra that installs it, and the extra
# each command asks for (train and bench include the server extra, so their own name is enough).
MODULE_EXTRAS = {
    "onnxruntime": "server",
    "yaml": "server",
    "prometheus_client": "server",
    "grpc_reflection": "server",
    "aiohttp": "server",
    "torch": "train",
    "onnx": "train",
    "tensorboard": "train",
    "matplotlib": "bench",
}
COMMAND_EXTRAS = {"train": "train", "export": "train", "eval": "train", "bench": "bench"}
_EXTRA_MODULES = {
    "server": {m for m, e in MODULE_EXTRAS.items() if e == "server"},
    "train": {m for m, e in MODULE_EXTRAS.items() if e in ("server", "train")},
    "bench": {m for m, e in MODULE_EXTRAS.items() if e != "train"} | {"torch", "onnx"},
}


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a pix2pix or CycleGAN model from a YAML config",
        description="Train a generator (and its discriminator(s)) from a YAML config on a data folder. "
        "The last line printed is `checkpoint: PATH`, the file `pixforge export` takes.",
    )
    p.add_argument("config", help="YAML config, e.g. training/configs/facades.yaml")
    p.add_argument("--data", required=True, help="dataset folder (layout depends on the config's data.mode)")
    p.add_argument("--out", help="run directory (default: runs/<config-name>-NNN)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimisation steps in total")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr_g=1e-4 (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def _tile_size_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of pixels or 'auto', got {text!r}"
        ) from None
    if value < 1:  # the range (16..2048) is export's to check: this module imports nothing heavy
        raise argparse.ArgumentTypeError(f"must be a positive whole number of pixels or 'auto', got {text!r}")
    return value


# gRPC turns a timeout into an absolute deadline in int64 nanoseconds since 1970, which overflows
# in 2262: from about 7e9 s on, every call fails at once with DEADLINE_EXCEEDED. Far above any real
# wait, far below that.
MAX_TIMEOUT_S = 10_000_000.0  # about 116 days


def _seconds(text: str, *, zero: bool, most: float | None = None) -> float:
    """A finite number of seconds, > 0 (>= 0 when `zero`), at most `most`; else an argparse error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value):  # float() takes inf and nan: no deadline at all, or nonsense
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text!r}")
    if value < 0 or (value == 0 and not zero):
        raise argparse.ArgumentTypeError(f"must be {'>= 0' if zero else '> 0'} seconds, got {text!r}")
    if most is not None and value > most:
        raise argparse.ArgumentTypeError(f"must be at most {most:.0f} seconds, got {text!r}")
    return value


def _timeout_arg(text: str) -> float:
    return _seconds(text, zero=False, most=MAX_TIMEOUT_S)


def _retry_seconds_arg(text: str) -> float:
    return _seconds(text, zero=True)


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained generator to a uint8-in/uint8-out ONNX model in a model repository",
        description="Turn a generator checkpoint into <repo>/<name>/<version>/model.onnx, with the "
        "pre/post-processing inside the graph, verified against PyTorch.",
    )
    p.add_argument("checkpoint", help="generator checkpoint (the `checkpoint:` line of `pixforge train`)")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--repo", required=True, help="model repository folder")
    p.add_argument("--version", type=int, help="version number (default: highest existing + 1)")
    p.add_argument(
        "--fp16",
        action="store_true",
        help="also write the fp16 variant model.fp16.onnx (GPU servers run it; I/O stay uint8)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write the int8 variant model.int8.onnx, calibrated on --calibration images and "
        "refused unless the task metric stays within tolerance of fp32; its speed-up over fp32 is "
        "measured on this CPU and recorded (CPU servers with VNNI/AMX run it, others where it was "
        ">= 1.05x on a CPU like theirs)",
    )
    p.add_argument(
        "--calibration",
        metavar="DIR",
        help="images (up to 16) that calibrate and judge --int8: typical inputs (for super-resolution "
        "high-resolution photos, degraded as in evaluation)",
    )
    p.add_argument(
        "--self-ensemble",
        action="store_true",
        help="export the x8 self-ensemble (mean over flips and 90-degree rotations; 8x the compute; "
        "generators without normalisation layers only)",
    )
    p.add_argument(
        "--no-subpixel",
        action="store_true",
        help="keep transposed convolutions, nearest-x2 + 3x3 convolutions and narrow RGB heads as "
        "exported instead of rewriting them into the equivalent phase convolutions that "
        "onnxruntime's CPU provider runs 1.1-1.5x faster (docs/model-contract.md)",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--from",
        dest="source",
        default="pixforge",
        choices=["pixforge", "junyanz", "onnx"],
        help="checkpoint format (junyanz: pytorch-CycleGAN-and-pix2pix latest_net_G.pth; onnx: a "
        "model.onnx exported by an earlier pixforge, re-exported under the current model contract)",
    )
    p.add_argument(
        "--arch",
        help="generator architecture for --from junyanz (unet_256, unet_128, resnet_9blocks, resnet_6blocks)",
    )
    p.add_argument("--norm", choices=["batch", "instance", "none"], help="normalisation for --from junyanz")
    p.add_argument(
        "--task",
        help="task for --from junyanz "
        "(super_resolution, colorization, style_translation, paired_translation)",
    )
    p.add_argument("--scale", type=int, default=1, help="scale for --from junyanz super-resolution models")
    p.add_argument("--description", help="one-line description stored in the model's metadata")
    p.add_argument(
        "--no-verify", action="store_true", help="skip the ONNX-vs-PyTorch parity check (not recommended)"
    )
    p.add_argument(
        "--tile-size",
        type=_tile_size_arg,
        help="recommended tile edge in input pixels stored in the metadata, or 'auto': measured on this "
        "CPU, the smallest tile about as fast per pixel as any larger one (default: auto; --from onnx "
        "keeps the file's)",
    )
    p.add_argument(
        "--parity-images", metavar="DIR", help="also check parity on up to 8 images from this folder"
    )


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="compute a model's quality metrics over a folder of images",
        description="Evaluate a model from a repository (or a running server) on a data folder.",
    )
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--data", required=True, help="folder of evaluation images")
    p.add_argument("--repo", help="model repository (default: the bundled one)")
    p.add_argument("--server", help="evaluate through a running server at HOST:PORT instead of locally")
    p.add_argument("--out", help="write per-image results and samples here")
    p.add_argument("--version", type=int, help="model version (default: the highest)")
    p.add_argument(
        "--max-images",
        type=int,
        default=0,
        metavar="N",
        help="at most N images per set or direction, spread evenly (default: all)",
    )
    p.add_argument(
        "--reverse-model",
        metavar="NAME",
        help="style translation: the opposite-direction model (adds cycle PSNR and its transfer rate)",
    )
    p.add_argument(
        "--source",
        choices=["A", "B"],
        help="style translation: the model's source domain (default: from its metadata, else A)",
    )
    p.add_argument(
        "--classifier-steps",
        type=int,
        default=300,
        metavar="N",
        help="style translation: training steps of the domain classifier (default 300)",
    )
    p.add_argument(
        "--render-size",
        type=int,
        default=0,
        metavar="PX",
        help="colourisation: the longest side the model runs at, as the server's "
        "colorization.render_size (default: the server's default; with --server, sent with each request)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16", "int8"],
        help="evaluate that precision variant of the version (model.int8.onnx, ...; default: its "
        "reference model.onnx); local only: a server runs the variant it picked at load",
    )


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the gRPC inference server",
        description="Serve every model of a model repository over gRPC (pixforge.v1.ImageTranslation).",
    )
    p.add_argument("--models", help="model repository (default: the bundled default models)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051)")
    p.add_argument("--config", help="server YAML config (see docs/serving.md)")
    p.add_argument("--host", help="address to bind (default 0.0.0.0)")
    p.add_argument(
        "--http-port",
        type=int,
        help="KServe v2 HTTP/REST port (0 disables, -1 picks a free one; default 8000)",
    )
    p.add_argument("--metrics-port", type=int, help="Prometheus metrics HTTP port (0 disables; default 9090)")
    p.add_argument(
        "--metrics-host",
        help="address of the metrics endpoint (default 127.0.0.1; 0.0.0.0 to scrape it remotely)",
    )
    p.add_argument("--poll", type=float, metavar="SECONDS", help="re-scan the repository every N seconds")
    p.add_argument("--dry-run", action="store_true", help="print the resolved server config as JSON and exit")


def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert files and folders of images (through a server, or in-process with --models)",
        description="Translate images with a model and write the results, mirroring the input tree: "
        "through a pixforge server (--server) or in this process (--models DIR).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--server", help="server HOST:PORT (default localhost:50051)")
    where.add_argument(
        "--models",
        metavar="DIR",
        help="convert in this process with a model repository folder instead of a server "
        "(needs the server extra; e.g. --models models)",
    )
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--glob", default=None, help="only files matching this pattern, e.g. '*.jpg'")
    p.add_argument(
        "--format", default="png", choices=["png", "jpeg", "webp"], help="output format (default png)"
    )
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    p.add_argument("--suffix", default="", help="append this to each output file's stem")
    p.add_argument("--dry-run", action="store_true", help="list what would be converted and exit")
    p.add_argument("--token", help="bearer token (default: $PIXFORGE_TOKEN)")
    p.add_argument(
        "--timeout", type=_timeout_arg, default=300.0, help="seconds allowed per image (> 0; default 300)"
    )
    p.add_argument("--tile", type=int, default=0, help="tile size in input pixels (default: the model's)")
    p.add_argument(
        "--tile-overlap", type=int, default=0, help="overlap between tiles (default: from the model)"
    )
    p.add_argument(
        "--retry-seconds",
        type=_retry_seconds_arg,
        default=None,  # None, not 120: --models warns about a --retry-seconds given explicitly
        help="keep retrying an image for this long while the server is restarting or busy "
        "(0: 5 retries at most; default 120)",
    )
    p.add_argument("--tls", action="store_true", help="connect with TLS (system root certificates)")
    p.add_argument("--root-cert", help="PEM root certificate(s) to trust for TLS (implies --tls)")
    p.add_argument(
        "--progress", action="store_true", help="show the progress bar even when stderr is not a terminal"
    )


def _add_models(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list or show the models of a repository, validating each",
        description="Print what the server will see in a model repository.",
    )
    msub = p.add_subparsers(dest="models_command", required=True)
    ls = msub.add_parser("list", help="one line per model version")
    ls.add_argument("--repo", help="model repository (default: the bundled one)")
    show = msub.add_parser("show", help="everything about one model")
    show.add_argument("name", help="model name")
    show.add_argument("--repo", help="model repository (default: the bundled one)")
    show.add_argument("--version", type=int, help="version (default: highest)")


def _add_health(sub) -> None:
    p = sub.add_parser(
        "health",
        help="ask a server's grpc.health.v1 service (exit 0 when SERVING)",
        description="A tiny grpc_health_probe: used by the Docker healthcheck.",
    )
    p.add_argument("--server", default="localhost:50051", help="server HOST:PORT")
    p.add_argument(
        "--service",
        default="",
        help="service or model name ('' = the process is up; pixforge.v1.ImageTranslation = ready, "
        "every model loaded)",
    )
    p.add_argument("--timeout", type=_timeout_arg, default=5.0, help="seconds (> 0; default 5)")


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks that print figures (engines, serving, batching, tiling, training)",
        description="Run a benchmark and print/write its figures.",
    )
    p.add_argument(
        "suite", nargs="?", default="all", help="engine, serving, batching, tiling, training, overload or all"
    )
    p.add_argument("--out", default="docs", help="where to write tables and plots")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny models, sizes and iterations: a smoke run in well under a minute per suite",
    )
    p.add_argument("--sizes", help="image edges in pixels, e.g. 256,512 (tiling: input edges up to 4096)")
    p.add_argument("--batches", help="batch sizes, e.g. 1,4,16 (engine and training suites)")
    p.add_argument(
        "--threads",
        type=int,
        help="intra-op threads for torch and onnxruntime alike (default: CPUs available)",
    )
    p.add_argument("--duration", type=float, help="seconds of measurement per case (default 10, --quick 1)")
    p.add_argument(
        "--rounds",
        type=int,
        help="engine, serving and batching suites: how many times the variants of a case alternate "
        "(default engine 4, serving 3; --quick fewer): more rounds, a steadier median ratio",
    )
    p.add_argument("--models", help="generators, e.g. unet_256,resnet_9blocks,facades,style_translation")
    p.add_argument("--concurrency", help="client concurrency levels, e.g. 1,2,4,8,16 (serving, batching)")
    p.add_argument("--engines", help="engine suite variants to run (default all that apply), e.g. eager,ort")
    p.add_argument("--steps", type=int, help="measured training steps per case (training suite)")
    p.add_argument(
        "--workers", help="training suite: data-loader worker counts to compare, e.g. 0,8 (default 0)"
    )
    p.add_argument(
        "--max-call-seconds",
        type=float,
        help="skip engine cases whose one call is estimated to take longer (default 30)",
    )
    p.add_argument(
        "--tag",
        help="name this run (e.g. gpu): kept beside the untagged run as "
        "<suite>-<tag>.json with its own report section, instead of replacing it",
    )
    p.add_argument("--no-report", action="store_true", help="write the suite JSON only, not benchmarks.md")
    p.add_argument("--repo", help="tiling and overload suites: model repository (default models/)")
    p.add_argument("--image", help="tiling suite: photo translated tiled and whole (default: synthetic)")
    p.add_argument(
        "--invariance-size", type=int, help="tiling suite: edge the photo is resized to (default 1536)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixforge",
        description="Image-to-image translation: train -> export -> serve -> convert.",
        epilog="Run `pixforge COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"pixforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_train,
        _add_export,
        _add_eval,
        _add_serve,
        _add_convert,
        _add_models,
        _add_health,
        _add_bench,
    ):
        add(sub)
    return parser


def missing_extra(command: str, exc: ModuleNotFoundError) -> str | None:
    """The one-line message for a command whose optional dependency is not installed, else None."""
    top = (exc.name or "").split(".")[0]
    if top not in MODULE_EXTRAS:
        return None
    own = COMMAND_EXTRAS.get(command)
    extra = own if own and top in _EXTRA_MODULES[own] else MODULE_EXTRAS[top]
    hint = " (torch first, for the CPU build: see the README)" if extra in ("train", "bench") else ""
    return (
        f"pixforge {command}: needs the {extra} extra (no module named {top!r}): "
        f"pip install 'pixforge[{extra}]'{hint}"
    )


def _stdout_gone() -> int:
    """The reader of stdout went away (`pixforge models show NAME | head`): stop quietly.

    Python ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError; point stdout at
    /dev/null so the interpreter's final flush cannot raise again, and exit as a command killed by
    SIGPIPE does (128 + 13), which is what shells expect from the left side of a cut-short pipe.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (replaced in-process)
        pass
    finally:
        os.close(devnull)
    return 141


def _stdout_is_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on the write end)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced in-process by an object without one
        return False
    if not hasattr(select, "poll"):  # Windows: no way to ask; a broken pipe there is stdout's
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poller.poll(0))


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        if not _stdout_is_closed():
            raise  # some other pipe or socket broke: a real error
        return _stdout_gone()


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = COMMANDS[args.command].split(":")
    try:
        module = importlib.import_module(module_name)
        code = int(getattr(module, func_name)(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not in the final flush
        return code
    except ModuleNotFoundError as exc:
        message = missing_extra(args.command, exc)
        if message is not None:
            print(message, file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
