"""Lazy input discovery and output naming for `pixforge convert`.

`walk()` is a generator over os.scandir: it never lists a whole tree (or a whole folder) in
memory, so 100k files cost the same memory as 100. Folders are visited depth-first; entries come
in the file system's order (sorting would need the whole folder in memory), which does not matter
because every output name depends only on its input's path.

Naming: a file INPUT maps to ``OUTPUT/<stem><suffix><ext>``; a folder INPUT's tree is mirrored
directly under OUTPUT (``in/a/b.jpg`` -> ``OUTPUT/a/b<suffix>.png``), so several folder inputs
merge their trees like ``rsync src/ dst/``. The extension is the output format's.

`InputIndex` answers the other question a run needs before it writes: is this existing output
path itself an input of the run (named, or one a folder walk reaches)? It too lists nothing.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
"""Files a folder walk picks up by default (case-insensitive); --glob replaces this filter."""

OUTPUT_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
# Every extension an output of any --format has had (".jpeg" too: a user may have renamed one):
# in-place runs leave ``*<suffix>`` files with any of these out, whatever --format is now.
OUTPUT_LIKE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp"})
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
        """A file an in-place run with this suffix may have written: ``*<suffix>.<ext>`` with the
        extension of any output format (png, jpg, jpeg, webp; any case), not only the current
        --format's, so changing --format between runs does not convert earlier outputs
        (``a_x.png`` into ``a_x_x.jpg``). Only meaningful with a suffix."""
        if not self.suffix:
            return False
        stem, ext = os.path.splitext(name)
        return ext.lower() in OUTPUT_LIKE_EXTENSIONS and stem.endswith(self.suffix)

    def output_for(self, rel_path: str) -> str:
        """Output path for an input's path relative to its root (a folder input, or its own dir)."""
        rel_dir, name = os.path.split(rel_path)
        stem = os.path.splitext(name)[0]
        return os.path.join(self.output, rel_dir, stem + self.suffix + OUTPUT_EXTENSIONS[self.fmt])


class Unreadable(NamedTuple):
    """An entry the walk cannot use: a folder it cannot list, a broken symlink or a symlink loop.

    Attributes:
        path: the entry's path (as walked, never with the reason folded in).
        reason: why, e.g. "Permission denied" or "broken symbolic link".
    """

    path: str
    reason: str


WalkItem = tuple[str, Job | str | Unreadable]


def walk(inputs: list[str], opts: WalkOptions) -> Iterator[WalkItem]:
    """Yield ("job", Job) for each input file, ("ignored", path) for files the filter drops and
    ("unreadable", Unreadable) for folders that cannot be listed and for symlinks in a folder that
    lead nowhere (broken, or a loop) but are named like inputs (the others are "ignored").

    File INPUTs are jobs (the user named them), except, in place, those a folder walk would leave
    out (named like outputs, or the report: ``convert ow/* --output ow``). Folder INPUTs are
    scanned lazily and symlinked folders are not followed (no cycles). An output folder inside an
    input folder is never descended into; when the output folder IS an input folder (in-place
    conversion, which needs a --suffix), files named like outputs
    (``*<suffix>.<png|jpg|jpeg|webp>``, whatever the current --format) are left out, so a re-run
    never converts its own results. Temp files of interrupted runs are never inputs. A file
    reached twice (named twice, named and inside a named folder, or through a symlink) is
    yielded once, where it is first reached: inputs are deduplicated by resolved path.

    Args:
        inputs: files and folders from the command line (checked to exist by the caller).
        opts: filter and naming options.

    Yields:
        ("job", Job), ("ignored", path) or ("unreadable", Unreadable(path, reason)).
    """
    out_real = os.path.realpath(opts.output)
    # Hashes of the resolved paths yielded so far (8 bytes a file, not paths, so memory stays flat):
    # the same file reached twice would otherwise be converted twice, or fail as its own collision.
    seen: set[int] = set()
    for root in inputs:
        if not os.path.isdir(root):
            if _left_out_in_place(root, opts, out_real):
                continue
            if _first_time(os.path.realpath(root), seen):
                yield "job", Job(root, opts.output_for(os.path.basename(root)))
            continue
        in_place = os.path.realpath(root) == out_real
        yield from _walk_dir(root, "", opts, out_real, in_place, seen)


def _left_out_in_place(path: str, opts: WalkOptions, out_real: str) -> bool:
    """Whether a named file is left out as a folder walk would leave it out: it lies in the output
    folder (in place) and is named like an output or is the report. A shell glob (``ow/*``)
    names the earlier outputs too, which must not be converted again (``a_x.png`` into
    ``a_x_x.png``) on every re-run."""
    if os.path.realpath(os.path.dirname(os.path.abspath(path))) != out_real:
        return False
    name = os.path.basename(path)
    return name == REPORT_NAME or opts.looks_like_output(name)


def _first_time(real_path: str, seen: set[int]) -> bool:
    """Whether a file's resolved path is new to this walk (and remember it)."""
    key = hash(real_path)
    if key in seen:
        return False
    seen.add(key)
    return True


def _walk_dir(
    root: str, rel: str, opts: WalkOptions, out_real: str, in_place: bool, seen: set[int]
) -> Iterator[WalkItem]:
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
                    is_dir = is_file = is_link = False
                rel_path = os.path.join(rel, entry.name) if rel else entry.name
                if not (is_dir or is_file):
                    # A symlink that leads nowhere (broken, or a loop) is a file the user expects
                    # converted: it fails (or, not named like an input, is ignored) rather than
                    # vanish from every count. Symlinked folders and special files stay out.
                    dead = _dead_link(entry)
                    if dead is not None:
                        if opts.wanted(entry.name):
                            yield "unreadable", Unreadable(entry.path, dead)
                        else:
                            yield "ignored", entry.path
                    continue
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
        yield "unreadable", Unreadable(folder, f"cannot list this folder: {exc.strerror or exc}")
        return
    for name in subdirs:
        path = os.path.join(folder, name)
        if os.path.realpath(path) == out_real:
            continue
        yield from _walk_dir(root, os.path.join(rel, name) if rel else name, opts, out_real, in_place, seen)


def _dead_link(entry: os.DirEntry) -> str | None:
    """Why a symlink entry leads nowhere ("broken symbolic link", "symbolic link loop"), else None."""
    try:
        if not entry.is_symlink():
            return None
        os.stat(entry.path)
    except OSError as exc:
        return dead_link_reason(exc)
    return None


def dead_link_reason(exc: OSError) -> str:
    """The words for an OSError from following a symlink (stat of a broken link or a loop)."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENOENT:
        return "broken symbolic link"
    return exc.strerror or str(exc)


def _location(path: str) -> str:
    """A path with its folder resolved but not its last component: the directory entry itself
    (what os.replace would replace), not what a symlink there points to."""
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(head), tail)


class InputIndex:
    """Whether an existing path is an input of this run, asked without listing anything.

    A named file is an input; so is a file a folder input's walk reaches, which only an output
    folder that holds an input folder (or is one, in place) can produce: an output folder inside
    an input folder is never walked. So the index keeps the named files (a command line's worth)
    and the folder inputs at or under the output folder, and answers from the path alone.

    Args:
        inputs: the run's inputs (files and folders, checked to exist by the caller).
        opts: the walk's options (filter, suffix, recursion, output folder).
    """

    def __init__(self, inputs: Iterable[str], opts: WalkOptions):
        self._opts = opts
        out_real = os.path.realpath(opts.output)
        self._files: set[str] = set()
        self._roots: list[tuple[str, bool]] = []  # (resolved folder, in place)
        for path in inputs:
            if os.path.isdir(path):
                real = os.path.realpath(path)
                if real == out_real or real.startswith(out_real.rstrip(os.sep) + os.sep):
                    self._roots.append((real, real == out_real))
            elif not _left_out_in_place(path, opts, out_real):
                # Both the entry and, for a symlink, the file it leads to.
                self._files.update((_location(path), os.path.realpath(path)))
        self._names = {os.path.basename(p) for p in self._files}  # a cheap first test
        # The last folder resolved: outputs come folder by folder, so an in-place re-run over
        # 100k finished files resolves each folder once, not each file.
        self._last: tuple[str, str] = ("", "")

    def holds(self, path: str) -> bool:
        """Whether writing ``path`` would replace an input of this run."""
        name = os.path.basename(path)
        if name not in self._names and not self._roots:
            return False  # the common case costs no system call
        head = os.path.dirname(os.path.abspath(path))
        if head != self._last[0]:
            self._last = (head, os.path.realpath(head))
        folder = self._last[1]
        if os.path.join(folder, name) in self._files:
            return True
        opts = self._opts
        for root, in_place in self._roots:
            reached = folder == root or (opts.recursive and folder.startswith(root.rstrip(os.sep) + os.sep))
            if not reached or name.endswith(TMP_SUFFIX) or name == REPORT_NAME:
                continue
            if in_place and opts.looks_like_output(name):
                continue
            if opts.wanted(name):
                return True
        return False


def count_inputs(inputs: list[str], opts: WalkOptions) -> int:
    """How many jobs `walk` will yield (for the progress bar; run in a background thread)."""
    return sum(1 for kind, _ in walk(inputs, opts) if kind == "job")
