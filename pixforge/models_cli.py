"""`pixforge models list|show`: what the server will see in a model repository, each model validated.

Torch-free: reads the layout with ``pixforge.repository`` and validates every file with
``pixforge.contract`` (the same code path the server uses), so a model that `list` marks OK is one the
server accepts.

Exit codes: ``list`` returns 0 when every version is valid and 1 when any is INVALID (so CI and deploy
scripts can gate on it); ``show`` returns 0 for a valid model and 1 for an invalid one; both return 2
for a missing repository or an unknown model name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pixforge.contract import (
    REQUIRED_KEYS,
    ModelContract,
    check_variant,
    contract_from_session,
    load_contract,
)
from pixforge.errors import ContractError
from pixforge.repository import (
    ModelEntry,
    default_repository,
    latest_versions,
    scan_repository,
    variant_files,
)

SIDECAR_FILE = "model.json"  # written next to model.onnx by `pixforge export`
_JSON_KEYS = ("metrics", "training_config", "generator_config")
_LONG_VALUE = 240  # characters of a long metadata value shown by `show`


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _repo(args) -> Path:
    return Path(args.repo) if getattr(args, "repo", None) else default_repository()


def _scan(repo: Path) -> list[ModelEntry] | None:
    try:
        return scan_repository(repo)
    except FileNotFoundError as exc:
        print(f"pixforge models: {exc}", file=sys.stderr)
        return None


def _load_version(entry: ModelEntry) -> tuple[ModelContract, list[str]]:
    """The reference file's contract and the precisions of every file of the version (reference
    first), each variant validated against the reference.

    Raises:
        ContractError: a file breaks the contract, or a variant does not match its name or the
            reference.
    """
    c = load_contract(entry.path)
    precisions = [c.metadata.get("precision", "fp32")]
    for precision, path in variant_files(entry.path.parent).items():
        check_variant(c, load_contract(path), precision, path)
        precisions.append(precision)
    return c, precisions


def _row(entry: ModelEntry) -> tuple[list[str], bool]:
    size = _human_size(sum(path.stat().st_size for path in entry.files))
    try:
        c, precisions = _load_version(entry)
    except ContractError as exc:
        return [entry.name, str(entry.version), "-", "-", "-", "-", "-", "-", size, f"INVALID: {exc}"], False
    return [
        entry.name,
        str(entry.version),
        c.task,
        f"x{c.scale}",
        f"{c.input_channels}->{c.output_channels}",
        str(c.size_multiple),
        str(c.tile_size),
        "+".join(precisions),
        size,
        "OK",
    ], True


def list_models(args) -> int:
    repo = _repo(args)
    entries = _scan(repo)
    if entries is None:
        return 2
    if not entries:
        print(f"no models in {repo} (expected <name>/<version>/model.onnx)")
        return 0
    header = [
        "NAME",
        "VERSION",
        "TASK",
        "SCALE",
        "CHANNELS",
        "MULTIPLE",
        "TILE",
        "PRECISION",
        "SIZE",
        "STATUS",
    ]
    rows, valid = [], []
    for e in entries:
        row, ok = _row(e)
        rows.append(row)
        if ok:
            valid.append(e)
    # The server serves the highest valid version of each model unless its config pins another.
    served = {(e.name, e.version) for e in latest_versions(valid).values()}
    for e, row in zip(entries, rows, strict=True):
        if (e.name, e.version) in served:
            row[1] += "*"
    all_ok = len(valid) == len(entries)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    print(f"repository: {repo}")
    for r in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    print("(* = the version the server serves by default: the highest valid one)")
    if not all_ok:
        print(
            "some models break the contract (docs/model-contract.md); the server will not load them",
            file=sys.stderr,
        )
    return 0 if all_ok else 1


def _open_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _pretty_value(key: str, value: str) -> str:
    if key in _JSON_KEYS:
        try:
            value = json.dumps(json.loads(value), sort_keys=True)
        except json.JSONDecodeError:
            pass
    return value if len(value) <= _LONG_VALUE else value[:_LONG_VALUE] + f"... ({len(value)} chars)"


def tiling_line(c: ModelContract) -> str:
    """Whether tiled output equals whole-image output for this model, in one line."""
    if not c.tiling_invariant:
        return (
            f"NOT tiling-invariant (contract {c.version}: no receptive radius or normalisation statistics; "
            "re-export with `pixforge export --from onnx`)"
        )
    norms = (
        f"{len(c.norm_channels)} norm layer(s) use the whole image's statistics"
        if c.norm_channels
        else "no norm layers"
    )
    return f"tiling-invariant (contract {c.version}; receptive radius {c.receptive_radius} px; {norms})"


def _print_contract(c: ModelContract) -> None:
    print(f"  task:            {c.task}")
    print(f"  scale:           x{c.scale}")
    print(f"  channels:        {c.input_channels} in -> {c.output_channels} out")
    print(f"  size multiple:   {c.size_multiple} (the server pads inputs up to it and crops the output back)")
    print(f"  tile size:       {c.tile_size} input pixels")
    print(f"  tiling:          {tiling_line(c)}")
    print(f"  precision:       {c.metadata.get('precision', '?')}")
    if c.description:
        print(f"  description:     {c.description}")
    metrics = c.metrics
    if metrics:
        print(
            "  metrics:         "
            + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}"
                for k, v in sorted(metrics.items())
            )
        )


def _print_sidecar(path: Path) -> None:
    sidecar = path.parent / SIDECAR_FILE
    if not sidecar.is_file():
        return
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"sidecar {sidecar.name}: unreadable ({exc})")
        return
    parity = data.get("parity")
    if parity:
        line = (
            f"parity at export: max diff {parity.get('max_diff')}, mean {parity.get('mean_diff', 0):.5f}, "
            f"{100 * parity.get('within_one', 0):.3f} % within 1 grey level"
        )
        if parity.get("fp16_psnr_db") is not None:
            line += f", fp16 vs fp32 PSNR {parity['fp16_psnr_db']:.2f} dB"
        print(line)
    elif "parity" in data:
        print("parity at export: not checked (--no-verify)")
    for note in data.get("inference_semantics", []):
        print(f"inference semantics: {note}")


def show_model(args) -> int:
    repo = _repo(args)
    entries = _scan(repo)
    if entries is None:
        return 2
    versions = [e for e in entries if e.name == args.name]
    if not versions:
        names = sorted({e.name for e in entries})
        print(
            f"pixforge models: no model named {args.name!r} in {repo}; "
            f"available: {', '.join(names) or 'none'}",
            file=sys.stderr,
        )
        return 2
    if args.version is None:
        entry = versions[-1]
    else:
        match = [e for e in versions if e.version == args.version]
        if not match:
            print(
                f"pixforge models: {args.name} has no version {args.version}; versions: "
                f"{', '.join(str(e.version) for e in versions)}",
                file=sys.stderr,
            )
            return 2
        entry = match[0]
    print(f"{entry.name} version {entry.version}   ({entry.path}, {_human_size(entry.path.stat().st_size)})")
    print(f"versions: {', '.join(str(e.version) for e in versions)}")
    try:
        session = _open_session(entry.path)
    except Exception as exc:  # onnxruntime's own exception types for unreadable files
        print(f"status: INVALID: not a loadable ONNX model: {str(exc).strip().splitlines()[0]}")
        return 1
    ok = True
    try:
        contract = contract_from_session(session)
        print("status: OK")
        _print_contract(contract)
    except ContractError as exc:
        print(f"status: INVALID: {exc}")
        ok = False
    print("signature:")
    for role, args_ in (("input ", session.get_inputs()), ("output", session.get_outputs())):
        for a in args_:
            print(f"  {role} {a.name}: {a.type} {list(a.shape)}")
    meta = session.get_modelmeta().custom_metadata_map
    print("metadata:")
    for key in sorted(meta, key=lambda k: (k not in REQUIRED_KEYS, k)):
        print(f"  {key} = {_pretty_value(key, meta[key])}")
    _print_sidecar(entry.path)
    return 0 if ok else 1


def run(args) -> int:
    """Entry point of `pixforge models` (see module docstring for exit codes)."""
    if args.models_command == "list":
        return list_models(args)
    return show_model(args)
