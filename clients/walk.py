"""Lazy input discovery and output naming for `pixforge convert`.

`walk()` is a generator over os.scandir: it never lists a whole tree (or a whole folder) in
memory, so 100k files cost the same memory as 100. Folders are visited depth-first; entries come
in the file system's order (sorting would need the whole folder in memory), which does not matter
because every output name depends only on its input's path.

Naming: a file INPUT maps to ``OUTPUT/<stem><suffix><ext>``; a folder INPUT's tree is mirrored
directly under OUTPUT (``in/a/b.jpg`` -> ``OUTPUT/a/b<suffix>.png``), so several folder inputs
merge their trees like ``rsync src/ dst/``. The extension is the output format's.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
"""Files a folder walk picks up by default (case-insensitive); --glob replaces this filter."""

OUTPUT_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
TMP_SUFFIX = ".pixforge-tmp"
REPORT_NAME = "pixforge-convert-report.jsonl"
"""The failure report `pixforge convert` writes into the output folder (never an input)."""


class Job(os.PathLike):
    """One file to convert: a path-like of the input (the client reads it) plus its output path.

    Attributes:
        src: input file path.
        dst: final output file path.
    """

    __slots__ = ("src", "dst")

    def __init__(self, src: str, dst: str):
        self.src = src
        self.dst = dst

    def __fspath__(self) -> str:
        return self.src

    @property
    def tmp(self) -> str:
        """Temporary file beside dst: written first, then renamed over dst (atomic on POSIX)."""
        return temp_path(self.dst)

    def __repr__(self) -> str:
        return f"Job({self.src!r} -> {self.dst!r})"


NAME_MAX_BYTES = 255  # a file name's limit on Linux, macOS and Windows file systems alike


def temp_path(dst: str) -> str:
    """The temp file name for an output: hidden, in the same folder (so os.replace is atomic).

    An output whose name is near the limit would get a temp name over it (the prefix and suffix
    add 14 bytes) and fail to write: its temp name is then cut and made unique again by a digest
    of the full name, still ending in TMP_SUFFIX so walks skip it.
    """
    head, tail = os.path.split(dst)
    name = f".{tail}{TMP_SUFFIX}"
    if len(os.fsencode(name)) <= NAME_MAX_BYTES:
        return os.path.join(head, name)
    digest = "-" + hashlib.sha256(os.fsencode(tail)).hexdigest()[:16]
    room = NAME_MAX_BYTES - len(os.fsencode(f".{digest}{TMP_SUFFIX}"))
    cut = tail
    while len(os.fsencode(cut)) > room:  # by characters: a multi-byte one is never split
        cut = cut[:-1]
    return os.path.join(head, f".{cut}{digest}{TMP_SUFFIX}")


@dataclass(frozen=True)
class WalkOptions:
    """What to pick up and where it goes.

    Attributes:
        output: output folder.
        recursive: descend into sub-folders of folder inputs.
        glob: file-name pattern (case-insensitive) replacing the image-extension filter.
        fmt: output format ("png", "jpeg", "webp").
        suffix: appended to each output stem.
    """

    output: str
    recursive: bool = False
    glob: str | None = None
    fmt: str = "png"
    suffix: str = ""

    def wanted(self, name: str) -> bool:
        """Whether a file found in a folder is an input (extension filter or --glob)."""
        if self.glob:
            return fnmatch.fnmatchcase(name.lower(), self.glob.lower())
        return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS

    def looks_like_output(self, name: str) -> bool:
        """A file this run would have written (``*<suffix><ext>``); only meaningful with a suffix."""
        return bool(self.suffix) and name.endswith(self.suffix + OUTPUT_EXTENSIONS[self.fmt])

    def output_for(self, rel_path: str) -> str:
        """Output path for an input's path relative to its root (a folder input, or its own dir)."""
        rel_dir, name = os.path.split(rel_path)
        stem = os.path.splitext(name)[0]
        return os.path.join(self.output, rel_dir, stem + self.suffix + OUTPUT_EXTENSIONS[self.fmt])


def walk(inputs: list[str], opts: WalkOptions) -> Iterator[tuple[str, Job | str]]:
    """Yield ("job", Job) for each input file, ("ignored", path) for files the filter drops and
    ("unreadable", "path: reason") for folders that cannot be listed.

    File INPUTs are always jobs (the user named them). Folder INPUTs are scanned lazily and
    symlinked folders are not followed (no cycles). An output folder inside an input folder is
    never descended into; when the output folder IS an input folder (in-place conversion, which
    needs a --suffix), files named like outputs (``*<suffix><ext>``) are left out, so a re-run
    never converts its own results. Temp files of interrupted runs are never inputs. A file
    reached twice (named twice, named and inside a named folder, or through a symlink) is yielded
    once, where it is first reached: inputs are deduplicated by resolved path.

    Args:
        inputs: files and folders from the command line (checked to exist by the caller).
        opts: filter and naming options.

    Yields:
        ("job", Job), ("ignored", path) or ("unreadable", "path: reason").
    """
    out_real = os.path.realpath(opts.output)
    # Hashes of the resolved paths yielded so far (8 bytes a file, not paths, so memory stays flat):
    # the same file reached twice would otherwise be converted twice, or fail as its own collision.
    seen: set[int] = set()
    for root in inputs:
        if not os.path.isdir(root):
            if _first_time(os.path.realpath(root), seen):
                yield "job", Job(root, opts.output_for(os.path.basename(root)))
            continue
        in_place = os.path.realpath(root) == out_real
        yield from _walk_dir(root, "", opts, out_real, in_place, seen)


def _first_time(real_path: str, seen: set[int]) -> bool:
    """Whether a file's resolved path is new to this walk (and remember it)."""
    key = hash(real_path)
    if key in seen:
        return False
    seen.add(key)
    return True


def _walk_dir(
    root: str, rel: str, opts: WalkOptions, out_real: str, in_place: bool, seen: set[int]
) -> Iterator[tuple[str, Job | str]]:
    # A generator over scandir: a folder's entries stream through; only sub-folder names wait.
    folder = os.path.join(root, rel) if rel else root
    folder_real = os.path.realpath(folder)  # once per folder: only symlinked files need their own
    subdirs: list[str] = []  # only names of sub-folders are kept, never files
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    is_file = not is_dir and entry.is_file()
                    is_link = is_file and entry.is_symlink()
                except OSError:
                    continue
                rel_path = os.path.join(rel, entry.name) if rel else entry.name
                if is_dir:
                    if opts.recursive:
                        subdirs.append(entry.name)
                elif is_file:
                    if entry.name.endswith(TMP_SUFFIX) or entry.name == REPORT_NAME:
                        continue
                    if in_place and opts.looks_like_output(entry.name):
                        continue
                    real = os.path.realpath(entry.path) if is_link else os.path.join(folder_real, entry.name)
                    if not _first_time(real, seen):
                        continue
                    if opts.wanted(entry.name):
                        yield "job", Job(entry.path, opts.output_for(rel_path))
                    else:
                        yield "ignored", entry.path
    except OSError as exc:
        yield "unreadable", f"{folder}: {exc.strerror or exc}"
        return
    for name in subdirs:
        path = os.path.join(folder, name)
        if os.path.realpath(path) == out_real:
            continue
        yield from _walk_dir(root, os.path.join(rel, name) if rel else name, opts, out_real, in_place, seen)


def count_inputs(inputs: list[str], opts: WalkOptions) -> int:
    """How many jobs `walk` will yield (for the progress bar; run in a background thread)."""
    return sum(1 for kind, _ in walk(inputs, opts) if kind == "job")
