"""`pixforge convert`: convert files and folder trees of images, through a server or in-process.

``--server HOST:PORT`` sends the images to a running pixforge server; ``--models DIR`` runs the
same server pipeline inside this process on a model repository (pixforge.service.local: the real
server, private, serving only that model), so the outputs are byte-identical either way.

Safe to kill and re-run: each output is written to a hidden temp file beside it and renamed into
place (os.replace is atomic), so an output either exists complete or not at all, and a re-run
skips finished outputs (unless --overwrite) and redoes the rest. Failed inputs do not stop the run;
they are printed and written to ``<output>/pixforge-convert-report.jsonl`` with the server's
status code and reason.

Throughput: inputs are walked lazily and streamed to the server over TranslateStream calls with a
bounded window of --concurrency items (see pixforge.clients.stream_core), so a small client keeps a GPU
server busy while its memory stays flat over any number of files.

Failures of the run rather than of a file stop it with one line and exit 2: the server cannot be
reached (after riding out a restart for ``--retry-seconds``), refuses the token, refuses the
--tile/--tile-overlap values (checked once, before the run), or the output disk is full (the
failure report stays valid JSON Lines). Progress: a bar on a terminal, else a line on stderr
every few seconds (count, rate, ETA), also while nothing completes.

Outputs never replace inputs: an output folder that holds an input (a named file's folder, or a
folder input) needs --suffix, and an output path that is itself an input of the run fails as
OUTPUT_IS_INPUT whatever --overwrite says.

Signals: the first SIGINT (Ctrl-C) or SIGTERM stops the run the same way (in-flight work is
cancelled, the in-process server stopped and its temp folder removed, the summary printed);
further ones are ignored while it cleans up, which takes a few seconds at most.

Exit codes: 0 every input converted or skipped; 1 some inputs failed (a dry run: some would);
2 usage error, or the run could not go on (a clear one-line message, no traceback); 130 stopped by
SIGINT, 143 by SIGTERM.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import signal
import stat
import struct
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import grpc
from tqdm import tqdm

from pixforge.errors import PixforgeError, UsageError

from .client import Client
from .config import ClientConfigError
from .errors import ClientError
from .retry import RetryPolicy
from .types import ModelInfo
from .walk import REPORT_NAME, InputIndex, Job, Unreadable, WalkOptions, count_inputs, dead_link_reason, walk

# Failures that say "this run cannot go on", not "this file is bad": stop and exit 2.
FATAL_CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
)

# Images in a row that got no answer within --timeout (none converted in between) after which
# the run stops: the server is stuck, or every image needs a longer --timeout. Either way the rest
# would each wait out --timeout (300 s by default) to fail alike. At least the in-flight window,
# so one stuck stream's batch cannot stop a run alone.
DEADLINE_STREAK = 8


# Batch runs ride out a server restart or reload: waits of up to 0.5, 1, 2, 4, 8, 8, ... s (full
# jitter) for --retry-seconds after an item's first failure.
DEFAULT_RETRY_SECONDS = 120.0
PROGRESS_EVERY_S = 5.0  # progress line interval when stderr is not a terminal
# A write that fails with one of these cannot succeed for the next file either: stop the run.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
# The checks before a run (GetModel, the --tile probe) have their own deadline: --timeout is the
# budget of one image, and a tiny one (0.001 s) must not read as "cannot reach the server".
PREFLIGHT_TIMEOUT_S = 15.0
MAX_TILE = 2**32 - 1  # tile_size and tile_overlap are uint32 fields of the request
# After a SIGINT/SIGTERM, the most the run waits for the in-process server's workers to finish
# their current image before it exits without them (signals are ignored meanwhile).
INTERRUPT_WAIT_S = 10.0
# Characters that must not reach a terminal raw: controls (a newline in a file name would split
# a FAILED line in two) and the surrogates that stand for undecodable bytes of a file name.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def convert_retry(retry_seconds: float) -> RetryPolicy:
    """The retry policy of a conversion: backoff capped at 8 s, for ``retry_seconds`` per item."""
    return RetryPolicy(max_attempts=6, initial_backoff=0.5, max_backoff=8.0, retry_seconds=retry_seconds)


class RunStopped(PixforgeError):
    """A failure of the run, not of one file (e.g. the output disk is full): one line, exit 2."""


def shown(text: str) -> str:
    """``text`` for a terminal line: control characters and undecodable bytes of file names
    written as Python escapes (``\\n``, ``\\x1b``, ``\\udcff``), so one name cannot split or forge
    a line (the JSON report escapes them itself)."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


@dataclass(frozen=True)
class ConvertOptions:
    """Validated `pixforge convert` arguments."""

    inputs: tuple[str, ...]
    server: str
    model: str
    models_dir: str | None
    walk: WalkOptions
    quality: int
    concurrency: int
    overwrite: bool
    dry_run: bool
    token: str | None
    tls: bool | str
    timeout: float
    progress: bool
    progress_lines: bool
    tile: int
    tile_overlap: int
    retry_seconds: float
    ignored_flags: tuple[str, ...] = ()  # given explicitly but meaningless with --models

    @classmethod
    def from_args(cls, args) -> ConvertOptions:
        """Validate argparse arguments.

        Raises:
            UsageError: a message naming the bad flag or input.
        """
        if not 1 <= args.quality <= 100:
            raise UsageError(f"--quality must be within 1..100, got {args.quality}")
        if args.concurrency < 1:
            raise UsageError(f"--concurrency must be >= 1, got {args.concurrency}")
        if os.sep in args.suffix or (os.altsep and os.altsep in args.suffix):
            raise UsageError(f"--suffix must not contain a path separator: {args.suffix!r}")
        timeout = getattr(args, "timeout", None)
        timeout = 300.0 if timeout is None else timeout  # 0 is refused below, not taken as "default"
        if not math.isfinite(timeout) or timeout <= 0:
            raise UsageError(f"--timeout must be a finite number of seconds > 0, got {timeout}")
        if not args.model.strip():
            raise UsageError("--model must not be empty")
        models_dir = getattr(args, "models", None)
        server = getattr(args, "server", None)
        if models_dir and server:
            raise UsageError(
                "--models and --server exclude each other: convert in-process or through a server"
            )
        if server is not None and not server.strip():
            # An empty value would quietly become localhost:50051 (a script's unset variable).
            raise UsageError("--server must not be empty: give HOST:PORT")
        if models_dir and not os.path.isdir(models_dir):
            raise UsageError(f"--models folder not found: {shown(models_dir)}")
        tile = getattr(args, "tile", None) or 0
        tile_overlap = getattr(args, "tile_overlap", None) or 0
        for flag, value in (("--tile", tile), ("--tile-overlap", tile_overlap)):
            # The request's fields are uint32: a larger value would fail inside protobuf.
            if not 0 <= value <= MAX_TILE:
                raise UsageError(
                    f"{flag} must be within 0..{MAX_TILE} (0 = the model's default), got {value}"
                )
        retry_seconds = getattr(args, "retry_seconds", None)
        retry_explicit = retry_seconds is not None  # the parser's default is None: "not given"
        retry_seconds = DEFAULT_RETRY_SECONDS if retry_seconds is None else retry_seconds
        if not math.isfinite(retry_seconds) or retry_seconds < 0:
            raise UsageError(f"--retry-seconds must be a finite number of seconds >= 0, got {retry_seconds}")
        for path in args.inputs:
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:
                if os.path.lexists(path):  # the name is there: a symlink that leads nowhere
                    raise UsageError(f"input is a {dead_link_reason(exc)}: {shown(path)}") from None
                raise UsageError(f"input not found: {shown(path)}") from None
            # A folder walk only picks regular files; a named one must be one too: a named pipe
            # blocks its reader forever and a device such as /dev/zero never ends.
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise UsageError(
                    f"input is not a regular file or folder: {shown(path)} (a pipe, device or socket); "
                    "name image files or folders"
                )
        if os.path.exists(args.output) and not os.path.isdir(args.output):
            raise UsageError(f"--output exists and is not a folder: {shown(args.output)}")
        if not args.suffix:
            in_place = _input_in_output(args.inputs, args.output)
            if in_place is not None:
                raise UsageError(
                    f"--output is the folder of the input {shown(in_place)}: add --suffix so outputs "
                    "do not replace or mix with inputs"
                )
        root_cert = getattr(args, "root_cert", None)
        if root_cert and not os.path.isfile(root_cert):
            raise UsageError(f"--root-cert file not found: {shown(root_cert)}")
        tls: bool | str = root_cert or bool(getattr(args, "tls", False))
        ignored: list[str] = []
        if models_dir:  # the in-process server is private: no token, TLS or restarts to ride out
            given = (
                ("--token", getattr(args, "token", None)),
                ("--tls", getattr(args, "tls", False)),
                ("--root-cert", root_cert),
                ("--retry-seconds", retry_explicit),
            )
            ignored = [flag for flag, value in given if value]
        tty = sys.stderr.isatty()
        progress = getattr(args, "progress", False) or tty
        return cls(
            inputs=tuple(args.inputs),
            server=server or ("" if models_dir else "localhost:50051"),
            model=args.model.strip(),
            models_dir=models_dir or None,
            walk=WalkOptions(
                output=args.output,
                recursive=args.recursive,
                glob=args.glob,
                fmt=args.format,
                suffix=args.suffix,
            ),
            quality=args.quality,
            concurrency=args.concurrency,
            overwrite=args.overwrite,
            dry_run=args.dry_run,
            token=args.token or os.environ.get("PIXFORGE_TOKEN") or None,
            tls=tls,
            timeout=timeout,
            progress=progress,
            progress_lines=not progress,
            tile=tile,
            tile_overlap=tile_overlap,
            retry_seconds=retry_seconds,
            ignored_flags=tuple(ignored),
        )


def _input_in_output(inputs: list[str], output: str) -> str | None:
    """The first input that lies directly in the output folder (in-place), else None.

    A folder input that IS the output folder, or a file input whose folder is: its outputs land
    beside the inputs, so without --suffix ``a.jpg`` -> ``a.png`` replaces the input ``a.png``.
    """
    out_real = os.path.realpath(output)
    for path in inputs:
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        if os.path.realpath(folder) == out_real:
            return path
    return None


class Tally:
    """Counts, the progress bar and the failure report; shared by the feeding threads and main.

    Args:
        output: output folder (the report goes there).
        progress: show a tqdm bar on stderr.
        write_report: write failures to the report file (not in dry runs).
        progress_lines: print a progress line to stderr every PROGRESS_EVERY_S (no bar).
    """

    def __init__(self, output: str, progress: bool, write_report: bool = True, progress_lines: bool = False):
        self.converted = self.skipped = self.failed = self.ignored = 0
        self.total: int | None = None
        self._progress_lines = progress_lines
        self._next_line = time.monotonic() + PROGRESS_EVERY_S
        self.report_path = os.path.join(output, REPORT_NAME)
        self._write_report = write_report
        self._report: IO[str] | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.started = time.monotonic()
        if progress_lines:
            # Lines come from completions, and also from this ticker: a stalled run (a slow server,
            # a huge image, retries) completes nothing for minutes, and a log must still show it.
            threading.Thread(target=self._ticker, name="pixforge-progress", daemon=True).start()
        self.bar = tqdm(
            total=None,
            unit="img",
            desc="converting",
            file=sys.stderr,
            disable=not progress,
            dynamic_ncols=True,
            smoothing=0.05,
            mininterval=0.5,
        )

    def _tick(self) -> None:
        self.bar.set_postfix_str(f"ok={self.converted} skip={self.skipped} fail={self.failed}", refresh=False)
        self.bar.update(1)
        self._line_if_due()

    def _line_if_due(self) -> None:
        """Print the progress line if PROGRESS_EVERY_S passed since the last one (lock held)."""
        if self._progress_lines and not self._closed.is_set() and time.monotonic() >= self._next_line:
            self._next_line = time.monotonic() + PROGRESS_EVERY_S
            print(self.progress_line(), file=sys.stderr, flush=True)

    def _ticker(self) -> None:
        while not self._closed.wait(max(0.05, min(PROGRESS_EVERY_S, 1.0))):
            with self._lock:
                self._line_if_due()

    def progress_line(self) -> str:
        """One line for logs (stderr not a terminal): counts, rate and, once the total is known, ETA."""
        done = self.converted + self.skipped + self.failed
        elapsed = max(1e-9, time.monotonic() - self.started)
        rate = self.converted / elapsed
        text = f"progress: {done}"
        if self.total:
            text += f"/{self.total} ({100.0 * done / self.total:.0f}%)"
        text += (
            f" converted {self.converted}, skipped {self.skipped}, failed {self.failed}; {rate:.1f} images/s"
        )
        if self.total and rate > 0:
            text += f", ETA {_duration((self.total - done) / (done / elapsed))}"
        return text

    def set_total(self, total: int) -> None:
        with self._lock:
            self.total = total
            self.bar.total = total
            self.bar.refresh()

    def converted_one(self) -> None:
        with self._lock:
            self.converted += 1
            self._tick()

    def skipped_one(self) -> None:
        with self._lock:
            self.skipped += 1
            self._tick()

    def ignored_one(self) -> None:
        with self._lock:
            self.ignored += 1

    def failed_one(self, src: str, dst: str | None, code: str, message: str) -> None:
        """Count a failure, print it and append it to the report (created on first failure)."""
        line = json.dumps({"input": src, "output": dst, "code": code, "message": message}, ensure_ascii=False)
        with self._lock:
            self.failed += 1
            self._tick()
            self.bar.write(shown(f"FAILED {src}: {code}: {message}"), file=sys.stderr)
            if self._write_report:
                self._append_report(line)

    def _append_report(self, line: str) -> None:
        """Append one JSON line; on a write error cut the file back to its last whole line.

        Raises:
            RunStopped: the report cannot be written (e.g. the disk is full).
        """
        try:
            if self._report is None:
                os.makedirs(os.path.dirname(self.report_path) or ".", exist_ok=True)
                # backslashreplace: an undecodable file name (a lone surrogate) is written as the
                # JSON escape \udcXX instead of failing the write.
                self._report = open(  # noqa: SIM115
                    self.report_path, "w", encoding="utf-8", errors="backslashreplace"
                )
            good = self._report.tell()
        except OSError as exc:
            self._write_report = False
            raise RunStopped(f"cannot write the report {self.report_path}: {exc.strerror or exc}") from None
        try:
            self._report.write(line + "\n")
            self._report.flush()  # a killed run still leaves the failures seen so far
        except OSError as exc:
            self._write_report = False
            try:  # drop the partial line so the report stays valid JSON Lines
                self._report.seek(good)
                self._report.truncate()
                self._report.close()
            except OSError:
                pass
            self._report = None
            raise RunStopped(f"cannot write the report {self.report_path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            self.bar.close()
            if self._report is not None:
                try:
                    self._report.close()
                except OSError:
                    pass
                self._report = None

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.converted / elapsed if elapsed > 0 else 0.0
        text = (
            f"converted {self.converted}, skipped {self.skipped}, failed {self.failed}, "
            f"ignored {self.ignored} (not images) in {elapsed:.1f}s ({rate:.1f} images/s)"
        )
        if self.failed:
            text += f"; failures listed in {self.report_path}"
        return text


def _duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def plan(opts: ConvertOptions, tally: Tally) -> Iterator[Job]:
    """Yield the Jobs to send, counting skips, ignored files and collisions on the way.

    Runs lazily in the client's feeding thread, so skipping 100k finished files overlaps with
    converting the rest.

    An existing output is skipped (or redone with --overwrite) only when it is a file that is no
    input of this run: one that is an input (its own, or another one's: ``a.jpg`` -> ``a.png``
    beside an input ``a.png``) fails as OUTPUT_IS_INPUT and is never written, and a folder or
    other non-file in the output's place fails as WRITE_ERROR instead of counting as done.
    """
    # Output hash -> hash of the folder of the input that claimed it: two hashes a file, not
    # paths, and enough to say which kind of collision a second claim is.
    claimed: dict[int, int] = {}
    inputs = InputIndex(opts.inputs, opts.walk)
    for kind, value in walk(list(opts.inputs), opts.walk):
        if kind == "ignored":
            tally.ignored_one()
            continue
        if isinstance(value, Unreadable):
            tally.failed_one(value.path, None, "UNREADABLE", value.reason)
            continue
        assert isinstance(value, Job)
        job = value
        key, folder = hash(job.dst), hash(os.path.dirname(os.path.abspath(job.src)))
        first = claimed.get(key)
        if first is not None:
            tally.failed_one(job.src, job.dst, "OUTPUT_COLLISION", _collision(first == folder))
            continue
        claimed[key] = folder
        try:
            existing = os.stat(job.dst)
        except OSError:
            existing = None  # absent (or a dangling symlink, which the write replaces)
        if existing is not None:
            if not stat.S_ISREG(existing.st_mode):
                tally.failed_one(
                    job.src,
                    job.dst,
                    "WRITE_ERROR",
                    "the output path exists and is not a file (a folder?); move it away or use "
                    "another --output or --suffix",
                )
                continue
            own = _same_file(job.src, existing)
            if own or inputs.holds(job.dst):
                whose = "its own input" if own else "another input of this run"
                tally.failed_one(
                    job.src,
                    job.dst,
                    "OUTPUT_IS_INPUT",
                    f"the output would replace {whose}; use --suffix or another --output",
                )
                continue
            if not opts.overwrite:
                _remove_quietly(job.tmp)  # a temp left by an interrupted --overwrite run
                tally.skipped_one()
                continue
        yield job


def _collision(same_folder: bool) -> str:
    """The OUTPUT_COLLISION reason, worded by what the two inputs have in common."""
    if same_folder:
        return (
            "another input in the same folder has the same name with a different extension and "
            "maps to the same output; rename one or convert it separately with --suffix"
        )
    return (
        "another input from a different folder has the same name (or relative path) and maps to "
        "the same output; rename one or convert them into different --output folders"
    )


def _same_file(path: str, other: os.stat_result) -> bool:
    """Whether ``path`` is the file ``other`` describes (a hard link, or a symlink to it)."""
    try:
        mine = os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (other.st_dev, other.st_ino)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass  # not ours to fail on: the real output exists


def write_atomically(job: Job, data: bytes) -> None:
    """Write data to job.dst through a temp file in the same folder + os.replace.

    A kill at any point leaves either the previous state or the complete file, never a partial
    one (a stale temp file is overwritten by the next run).
    """
    os.makedirs(os.path.dirname(job.dst) or ".", exist_ok=True)
    tmp = job.tmp
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, job.dst)
    except BaseException:
        _remove_quietly(tmp)
        raise


def _start_counter(opts: ConvertOptions, tally: Tally) -> threading.Thread:
    """Count the inputs in the background so the bar gets a total (and an ETA) without a list."""

    def count() -> None:
        try:
            tally.set_total(count_inputs(list(opts.inputs), opts.walk))
        except Exception:  # a total is cosmetic: a failed count only leaves the bar without ETA
            pass

    thread = threading.Thread(target=count, name="pixforge-count", daemon=True)
    thread.start()
    return thread


def dry_run(opts: ConvertOptions) -> int:
    """Print what would be converted (input -> output) and the counts; contacts no server.

    Returns:
        0, 1 when some inputs would fail (collisions, outputs that are inputs, unreadable
        entries), 2 when --models has no such model.
    """
    if opts.models_dir:  # no server to ask, but the repository can say whether the model is there
        try:
            from pixforge.service.errors import ServerConfigError
            from pixforge.service.local import check_model
        except ModuleNotFoundError as exc:
            return _needs_server_extra(exc)
        try:
            check_model(opts.models_dir, opts.model)
        except ServerConfigError as exc:
            return _error(str(exc))
    tally = Tally(opts.walk.output, progress=False, write_report=False)
    n = 0
    for job in plan(opts, tally):
        print(shown(f"{job.src} -> {job.dst}"))
        n += 1
    tally.close()
    print(
        f"dry run: would convert {n}, skip {tally.skipped} (output exists), "
        f"fail {tally.failed}, ignore {tally.ignored} (not images)",
    )
    return 1 if tally.failed else 0


def _error(message: str) -> int:
    print(shown(f"pixforge convert: {message}"), file=sys.stderr)
    return 2


def _needs_server_extra(exc: ModuleNotFoundError) -> int:
    return _error(f"--models needs the server extra ({exc.name} is missing): pip install 'pixforge[server]'")


def _preflight(client: Client, opts: ConvertOptions) -> str | None:
    """Check the server answers, serves the model and accepts --tile/--tile-overlap; return an
    error message or None.

    It has its own deadline (PREFLIGHT_TIMEOUT_S), not --timeout: that is one image's budget, and
    a tiny one says nothing about whether the server is up.
    """
    where = _where(opts)
    budget = PREFLIGHT_TIMEOUT_S
    try:
        info = client.get_model(opts.model, timeout=budget)
    except ClientError as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            try:
                names = sorted({m.name for m in client.list_models(timeout=budget)})
            except ClientError:
                names = []
            known = f" (it serves: {', '.join(names)})" if names else ""
            return f"model {opts.model!r} not found on {where}{known}"
        if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"{where} did not answer within {budget:g} s (asking for model {opts.model!r})"
        if exc.code == grpc.StatusCode.UNAVAILABLE:
            return f"cannot reach {where}: {exc.message or exc.code.name}"
        if exc.code == grpc.StatusCode.UNAUTHENTICATED:
            return f"{where} refused the token (--token or $PIXFORGE_TOKEN): {exc.message}"
        return f"{where} answered {exc.code.name}: {exc.message}"
    if info.state == "failed":
        return f"model {opts.model!r} failed to load on {where}: {info.error}"
    return _tile_problem(client, opts, info)


def _tile_problem(client: Client, opts: ConvertOptions, info: ModelInfo) -> str | None:
    """Why the server would refuse --tile/--tile-overlap for every image, else None.

    What the model's description allows is checked here (a multiple of its size_multiple, an
    overlap under half the tile); the server's own bounds (tiling.min/max_tile_size) and its
    default tile are not in it, so one tiny image (16 x 16 gray) is sent with the options and an
    "options." refusal is the answer; any other outcome passes (the run will tell). A broken
    image would spare the model its few microseconds, but the server reads the image header
    before it checks the tiles, and a truncated image makes the decoder log to stderr.
    """
    if not (opts.tile or opts.tile_overlap):
        return None
    multiple = max(1, info.size_multiple)
    if opts.tile and opts.tile % multiple:
        return f"--tile {opts.tile} is not a multiple of model {opts.model!r}'s size_multiple {multiple}"
    if opts.tile and opts.tile_overlap and opts.tile_overlap * 2 >= opts.tile:
        return f"--tile-overlap {opts.tile_overlap} must be less than half of --tile {opts.tile}"
    try:
        client.translate(
            _probe_png(max(16, multiple)),
            opts.model,
            opts.walk.fmt,
            quality=opts.quality,
            tile_size=opts.tile,
            tile_overlap=opts.tile_overlap,
            timeout=PREFLIGHT_TIMEOUT_S,
        )
    except ClientError as exc:
        if exc.code == grpc.StatusCode.INVALID_ARGUMENT and exc.message.startswith("options."):
            flags = " ".join(
                f"{flag} {value}"
                for flag, value in (("--tile", opts.tile), ("--tile-overlap", opts.tile_overlap))
                if value
            )
            return f"{_where(opts)} refuses {flags}: {exc.message}"
    return None


def _probe_png(edge: int) -> bytes:
    """A valid ``edge`` x ``edge`` 8-bit gray PNG (mid-gray), built with the standard library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", edge, edge, 8, 0, 0, 0, 0)
    rows = (b"\x00" + b"\x80" * edge) * edge  # filter byte 0, then the row's pixels
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def convert(client: Client, opts: ConvertOptions) -> int:
    """Run the conversion with a connected client; return the exit code.

    Raises:
        KeyboardInterrupt: SIGINT/SIGTERM (after the summary is printed and in-flight work
            cancelled).
    """
    try:
        os.makedirs(opts.walk.output, exist_ok=True)
    except OSError as exc:
        return _error(f"cannot create --output {opts.walk.output}: {exc.strerror}")
    # The report describes the latest run only; a stale one would list fixed failures.
    _remove_quietly(os.path.join(opts.walk.output, REPORT_NAME))
    tally = Tally(opts.walk.output, opts.progress, progress_lines=opts.progress_lines)
    _start_counter(opts, tally)
    fatal: ClientError | None = None
    stopped: str | None = None
    results = None
    streak_limit = max(DEADLINE_STREAK, 2 * opts.concurrency)
    timed_out = 0  # images in a row that got no answer within --timeout
    try:
        results = client.translate_many(
            plan(opts, tally),
            opts.model,
            opts.walk.fmt,
            concurrency=opts.concurrency,
            ordered=False,
            quality=opts.quality,
            tile_size=opts.tile,
            tile_overlap=opts.tile_overlap,
            timeout=opts.timeout,
        )
        for result in results:
            job: Job = result.source
            if result.ok:
                try:
                    write_atomically(job, result.image)  # type: ignore[arg-type]
                except OSError as exc:
                    reason = f"cannot write the output: {exc.strerror or exc}"
                    if exc.errno in DISK_FULL_ERRNOS:
                        # Said first: the report write below fails on the same full disk, and
                        # "cannot write the report" would hide the cause.
                        stopped = f"stopped: {reason} ({job.dst}); free space and re-run to resume"
                    try:
                        tally.failed_one(job.src, job.dst, "WRITE_ERROR", reason)
                    except RunStopped:
                        if stopped is None:
                            raise
                    if stopped is not None:
                        break
                    continue
                tally.converted_one()
                timed_out = 0
                continue
            error = result.error
            assert error is not None
            code, message = error.code_name, error.message
            unreadable = _unreadable_reason(job, error)
            if unreadable is not None:
                code, message = "UNREADABLE", f"cannot read the input: {unreadable}"
            tally.failed_one(job.src, job.dst, code, message)
            if error.code in FATAL_CODES:
                fatal = error
                break
            timed_out = timed_out + 1 if error.code == grpc.StatusCode.DEADLINE_EXCEEDED else 0
            if timed_out >= streak_limit:
                stopped = (
                    f"stopped: {timed_out} images in a row got no answer within --timeout "
                    f"{opts.timeout:g} s: {_where(opts)} is stuck, or the images need a longer "
                    "--timeout (finished outputs are kept; re-run to resume)"
                )
                break
    except RunStopped as exc:
        stopped = f"stopped: {exc}; re-run to resume"
    except (ValueError, PixforgeError) as exc:
        # A setting the request cannot carry, or a bug: one line and exit 2, never a traceback.
        stopped = f"stopped: {exc}"
    except KeyboardInterrupt:
        tally.close()
        print(tally.summary())  # stdout's last line is the summary, whatever ended the run
        raise
    finally:
        if results is not None:
            results.close()  # cancels in-flight work on break
    tally.close()
    print(tally.summary())
    if stopped is not None:
        return _error(stopped)
    if fatal is not None:
        return _error(
            f"stopped: {_where(opts)} answered {fatal.code_name}: {fatal.message} "
            "(finished outputs are kept; re-run to resume)"
        )
    return 1 if tally.failed else 0


def _unreadable_reason(job: Job, error: ClientError) -> str | None:
    """Why the client could not read an input file (e.g. "Permission denied"), else None.

    The client library reports an input it cannot read as INVALID_ARGUMENT, the code of a
    corrupt image; the report says UNREADABLE instead. The OSError is taken from the error's
    cause chain where the library keeps it; else an error the client made itself (no server
    named) is told apart by opening the file again: failures only, so it costs nothing per
    converted file.
    """
    cause = error.__cause__
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__
    if isinstance(cause, OSError):
        return cause.strerror or str(cause)
    if error.code != grpc.StatusCode.INVALID_ARGUMENT or error.target:
        return None
    try:
        os.close(os.open(job.src, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


class _Signals:
    """SIGINT and SIGTERM during a run: the first one stops it, later ones are ignored.

    The first raises KeyboardInterrupt in the main thread, so the run's own cleanup does the
    work (cancel in-flight items, print the summary, stop the in-process server, remove its temp
    folder): a SIGTERM used to kill the process outright and leak /tmp/pixforge-convert-*. Both
    signals are then ignored until the process exits: a second Ctrl-C used to break that cleanup
    (KeyboardInterrupt tracebacks from threading's exit-time join of the server's workers, or
    "terminate called without an active exception" from native threads torn down mid-run).
    Without a signal the previous handlers come back on exit. Main thread only; elsewhere
    (signals cannot be handled there) it does nothing.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame) -> None:
        if self.received is not None:
            return
        self.received = signum
        for sig in self._previous:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self.received is None:
            self.restore()

    def restore(self) -> None:
        """Put back the handlers found on entry."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)  # type: ignore[arg-type]
        self._previous.clear()

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a command killed by it: 130 for SIGINT
        (also for a KeyboardInterrupt raised some other way), 143 for SIGTERM."""
        return 128 + (self.received or signal.SIGINT)


def _wait_for_workers(before: set[threading.Thread], seconds: float, code: int) -> None:
    """After an interrupt: give threads started during the run ``seconds`` to finish, then exit
    without them.

    The in-process server's workers finish the image they hold before they stop, and the
    interpreter's exit would wait for them for as long as that takes, with Ctrl-C ignored. Past
    the bound the process ends at once (its cleanup is done; stdout and stderr are flushed).
    """
    deadline = time.monotonic() + seconds
    for thread in threading.enumerate():
        if thread in before or thread.daemon or thread is threading.current_thread():
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
    busy = [t for t in threading.enumerate() if t not in before and not t.daemon and t.is_alive()]
    busy = [t for t in busy if t is not threading.current_thread()]
    if busy:
        print(
            f"pixforge convert: {len(busy)} worker thread(s) still busy after {seconds:g} s; "
            "exiting without them",
            file=sys.stderr,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(args) -> int:
    """Entry point of `pixforge convert` (see pixforge/cli.py for the flags).

    Args:
        args: the parsed argparse namespace.

    Returns:
        0 all converted or skipped, 1 some failed, 2 usage or connection error, 130 / 143
        stopped by SIGINT / SIGTERM.
    """
    try:
        opts = ConvertOptions.from_args(args)
    except UsageError as exc:
        return _error(str(exc))
    before = set(threading.enumerate())
    with _Signals() as signals:
        try:
            return _run(opts)
        except KeyboardInterrupt:
            pass
        except (ValueError, PixforgeError) as exc:  # e.g. a setting only the client library checks
            return _error(str(exc))
    name = signal.Signals(signals.exit_code - 128).name
    print(
        f"pixforge convert: interrupted by {name}: finished outputs are kept; re-run to resume",
        file=sys.stderr,
    )
    if signals.received is not None:  # a real signal, so a real process: bound its exit
        _wait_for_workers(before, INTERRUPT_WAIT_S, signals.exit_code)
    return signals.exit_code


def _run(opts: ConvertOptions) -> int:
    if opts.dry_run:
        return dry_run(opts)
    if opts.models_dir:
        return _run_in_process(opts, opts.models_dir)
    try:
        client = Client(
            opts.server,
            token=opts.token,
            tls=opts.tls,
            timeout=opts.timeout,
            retry=convert_retry(opts.retry_seconds),
        )
    except ClientConfigError as exc:
        return _error(str(exc))
    with client:
        problem = _preflight(client, opts)
        if problem:
            return _error(problem)
        return convert(client, opts)


def _where(opts: ConvertOptions) -> str:
    return f"the in-process server ({opts.models_dir})" if opts.models_dir else f"server {opts.server}"


def _run_in_process(opts: ConvertOptions, models_dir: str) -> int:
    """``--models DIR``: the server's pipeline in this process (needs the server extra)."""
    if opts.ignored_flags:
        print(
            f"pixforge convert: warning: ignoring {', '.join(opts.ignored_flags)} with --models "
            "(they apply to --server; the in-process server needs no token, TLS or retries)",
            file=sys.stderr,
        )
    try:
        from pixforge.service.errors import ServerConfigError
        from pixforge.service.local import start_local_server
    except ModuleNotFoundError as exc:
        return _needs_server_extra(exc)
    try:
        local = start_local_server(models_dir, opts.model)
    except ServerConfigError as exc:
        return _error(str(exc))
    with local:
        client = Client(local.address, token=local.token, timeout=opts.timeout, retry=convert_retry(0.0))
        with client:
            problem = _preflight(client, opts)
            if problem:
                return _error(problem)
            return convert(client, opts)
