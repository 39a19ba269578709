"""Print a wheel's requirements (base + chosen extras), minus the ones a Docker stage installs itself.

pyproject.toml makes `pixforge[server]` depend on onnxruntime-gpu on Linux x86-64 (plain
onnxruntime elsewhere), and pip has no way to leave one dependency out. The CPU image wants plain
onnxruntime on x86-64, so its build stage installs the wheel with ``--no-deps`` and installs what
this script prints plus ``onnxruntime==$ORT_VERSION``. Reading the requirements from the built
wheel (not a second hand-kept list) means a dependency added to pyproject.toml reaches the image by
itself.

Usage (see Dockerfile, stage build-cpu):
    python wheel_requirements.py /wheels/pixforge-*.whl --extra server \
        --drop onnxruntime --drop onnxruntime-gpu

Markers stay on the printed lines: pip evaluates them inside the image. Requirements of an extra
(``; extra == "train"``) are printed only for the extras named with ``--extra``, without their
``extra == ...`` clause (pip would read it as false outside an install of the extra); an extra
that names the project itself (``pixforge[server]; extra == "train"``) brings that extra's lines.
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")
_EXTRA_MARKER = re.compile(r"""\bextra\s*==""")
# The two shapes build backends write: `extra == "x"` and `(<environment marker>) and extra == "x"`.
_EXTRA_CLAUSE = re.compile(
    r"""^\s*(?:\((?P<env>.*)\)\s+and\s+)?extra\s*==\s*(?P<q>["'])(?P<extra>[^"']+)(?P=q)\s*$"""
)
_EXTRAS = re.compile(r"^\s*[A-Za-z0-9._-]+\s*\[([^\]]*)\]")


def canonical_name(name: str) -> str:
    """PEP 503 normalised project name (``Onnxruntime_GPU`` -> ``onnxruntime-gpu``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_metadata(wheel: str | Path) -> str:
    """Return the text of ``*.dist-info/METADATA`` inside a wheel.

    Raises:
        ValueError: the file is not a wheel or holds no METADATA.
    """
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            if len(names) != 1:
                raise ValueError(f"{wheel}: expected one *.dist-info/METADATA, found {len(names)}")
            return zf.read(names[0]).decode("utf-8")
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{wheel}: not a readable wheel ({exc})") from None


def base_requirements(metadata: str, drop: set[str] = frozenset()) -> list[str]:
    """The ``Requires-Dist`` lines that apply without extras, minus the projects in ``drop``.

    Args:
        metadata: the METADATA text of a wheel.
        drop: project names to leave out (any spelling; compared PEP 503-normalised).

    Returns:
        Requirement strings, markers kept, in METADATA order.
    """
    dropped = {canonical_name(d) for d in drop}
    out = []
    for line in HeaderParser().parsestr(metadata).get_all("Requires-Dist") or []:
        _spec, _, marker = line.partition(";")
        if _EXTRA_MARKER.search(marker):
            continue
        match = _NAME.match(line)
        if not match:
            raise ValueError(f"cannot read the project name of requirement {line!r}")
        if canonical_name(match.group(1)) in dropped:
            continue
        out.append(line.strip())
    return out


def requirements(metadata: str, extras: set[str] = frozenset(), drop: set[str] = frozenset()) -> list[str]:
    """The ``Requires-Dist`` lines of the base install plus ``extras``, minus the projects in ``drop``.

    Args:
        metadata: the METADATA text of a wheel.
        extras: extra names whose requirements to add (an extra's own references to the project,
            e.g. ``pixforge[server]``, add those extras in turn).
        drop: project names to leave out (any spelling; compared PEP 503-normalised).

    Returns:
        Requirement strings in METADATA order, environment markers kept, ``extra`` clauses removed.

    Raises:
        ValueError: an unknown extra, or a marker that combines ``extra`` in a way not handled here.
    """
    headers = HeaderParser().parsestr(metadata)
    project = canonical_name(headers.get("Name", ""))
    provided = {canonical_name(e) for e in headers.get_all("Provides-Extra") or []}
    wanted = {canonical_name(e) for e in extras}
    parsed = []
    for line in headers.get_all("Requires-Dist") or []:
        spec, _, marker = line.partition(";")
        extra = env = None
        if _EXTRA_MARKER.search(marker):
            clause = _EXTRA_CLAUSE.match(marker)
            if not clause:
                raise ValueError(f"cannot read the extra of requirement {line!r}")
            extra, env = canonical_name(clause.group("extra")), clause.group("env")
        else:
            env = marker.strip() or None
        match = _NAME.match(spec)
        if not match:
            raise ValueError(f"cannot read the project name of requirement {line!r}")
        parsed.append((canonical_name(match.group(1)), spec.strip(), env, extra))
    # An extra that requires the project itself with extras pulls those in (to a fixed point).
    changed = True
    while changed:
        changed = False
        for name, spec, _env, extra in parsed:
            if name == project and extra in wanted and (refs := _EXTRAS.match(spec)):
                new = {canonical_name(e) for e in refs.group(1).split(",") if e.strip()} - wanted
                wanted |= new
                changed = changed or bool(new)
    unknown = sorted(wanted - provided)
    if unknown:
        raise ValueError(
            f"the wheel provides no extra {', '.join(unknown)} (it has: {', '.join(sorted(provided))})"
        )
    dropped = {canonical_name(d) for d in drop}
    out = []
    for name, spec, env, extra in parsed:
        if (extra is not None and extra not in wanted) or name in dropped or name == project:
            continue
        out.append(f"{spec}; {env}" if env else spec)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", help="the built pixforge wheel")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME",
        help="add this extra's requirements (repeatable)",
    )
    parser.add_argument(
        "--drop", action="append", default=[], metavar="NAME", help="leave this project out (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        lines = requirements(read_metadata(args.wheel), set(args.extra), set(args.drop))
    except ValueError as exc:
        print(f"wheel_requirements: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
