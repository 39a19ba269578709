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
reached (after riding out a restart for ``--retry-seconds``), refuses the token, or the output disk
is full (the failure report stays valid JSON Lines). Progress: a bar on a terminal, else a line on
stderr every few seconds (count, rate, ETA).

Exit codes: 0 every input converted or skipped; 1 some inputs failed; 2 usage error, or the run
could not go on (a clear one-line message, no traceback).
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import sys
import threading
import time
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
from .walk import REPORT_NAME, Job, WalkOptions, count_inputs, walk

# Failures that say "this run cannot go on", not "this file is bad": stop and exit 2.
FATAL_CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
)

# Batch runs ride out a server restart or reload: waits of up to 0.5, 1, 2, 4, 8, 8, ... s (full
# jitter) for --retry-seconds after an item's first failure.
DEFAULT_RETRY_SECONDS = 120.0
PROGRESS_EVERY_S = 5.0  # progress line interval when stderr is not a terminal
# A write that fails with one of these cannot succeed for the next file either: stop the run.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def convert_retry(retry_seconds: float) -> RetryPolicy:
    """The retry policy of a conversion: backoff capped at 8 s, for ``retry_seconds`` per item."""
    return RetryPolicy(max_attempts=6, initial_backoff=0.5, max_backoff=8.0, retry_seconds=retry_seconds)


class RunStopped(PixforgeError):
    """A failure of the run, not of one file (e.g. the output disk is full): one line, exit 2."""


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
        if models_dir and not os.path.isdir(models_dir):
            raise UsageError(f"--models folder not found: {models_dir}")
        tile = getattr(args, "tile", None) or 0
        tile_overlap = getattr(args, "tile_overlap", None) or 0
        if tile < 0 or tile_overlap < 0:
            raise UsageError("--tile and --tile-overlap must be >= 0 (0 = the model's default)")
        retry_seconds = getattr(args, "retry_seconds", None)
        retry_seconds = DEFAULT_RETRY_SECONDS if retry_seconds is None else retry_seconds
        if not math.isfinite(retry_seconds) or retry_seconds < 0:
            raise UsageError(f"--retry-seconds must be a finite number of seconds >= 0, got {retry_seconds}")
        for path in args.inputs:
            try:
                mode = os.stat(path).st_mode
            except OSError:
                raise UsageError(f"input not found: {path}") from None
            # A folder walk only picks regular files; a named one must be one too: a named pipe
            # blocks its reader forever and a device such as /dev/zero never ends.
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise UsageError(
                    f"input is not a regular file or folder: {path} (a pipe, device or socket); "
                    "name image files or folders"
                )
        if os.path.exists(args.output) and not os.path.isdir(args.output):
            raise UsageError(f"--output exists and is not a folder: {args.output}")
        out_real = os.path.realpath(args.output)
        if not args.suffix and any(os.path.isdir(p) and os.path.realpath(p) == out_real for p in args.inputs):
            raise UsageError(
                "--output is an input folder: add --suffix so outputs do not replace or mix with inputs"
            )
        root_cert = getattr(args, "root_cert", None)
        if root_cert and not os.path.isfile(root_cert):
            raise UsageError(f"--root-cert file not found: {root_cert}")
        tls: bool | str = root_cert or bool(getattr(args, "tls", False))
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
        )


class Tally:
    """Counts, the progress bar and the failure report; shared by the feeding threads and main.

    Args:
        output: output folder (the report goes there).
        progress: show a tqdm bar on stderr.
        write_report: write failures to the report file (not in dry runs).
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
        self.started = time.monotonic()
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
        if self._progress_lines and time.monotonic() >= self._next_line:
            self._next_line = time.monotonic() + PROGRESS_EVERY_S
            print(self.progress_line(), file=sys.stderr, flush=True)

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
            self.bar.write(f"FAILED {src}: {code}: {message}", file=sys.stderr)
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
                self._report = open(self.report_path, "w", encoding="utf-8")  # noqa: SIM115
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
    """
    claimed: set[int] = set()  # hashes of outputs claimed this run: 8 bytes a file, not paths
    for kind, value in walk(list(opts.inputs), opts.walk):
        if kind == "ignored":
            tally.ignored_one()
            continue
        if kind == "unreadable":
            tally.failed_one(str(value), None, "UNREADABLE", "cannot list this folder")
            continue
        job: Job = value  # type: ignore[assignment]
        key = hash(job.dst)
        if key in claimed:
            tally.failed_one(
                job.src,
                job.dst,
                "OUTPUT_COLLISION",
                "another input in this run maps to the same output (same name, different "
                "extension); rename one or convert it separately with --suffix",
            )
            continue
        claimed.add(key)
        if os.path.exists(job.dst):
            if _same_file(job.src, job.dst):
                tally.failed_one(
                    job.src,
                    job.dst,
                    "OUTPUT_IS_INPUT",
                    "the output would replace its own input; use --suffix or another --output",
                )
                continue
            if not opts.overwrite:
                _remove_quietly(job.tmp)  # a temp left by an interrupted --overwrite run
                tally.skipped_one()
                continue
        yield job


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


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
    """Print what would be converted (input -> output) and the counts; contacts no server."""
    tally = Tally(opts.walk.output, progress=False, write_report=False)
    n = 0
    for job in plan(opts, tally):
        print(f"{job.src} -> {job.dst}")
        n += 1
    tally.close()
    print(
        f"dry run: would convert {n}, skip {tally.skipped} (output exists), "
        f"fail {tally.failed}, ignore {tally.ignored} (not images)",
    )
    return 0


def _error(message: str) -> int:
    print(f"pixforge convert: {message}", file=sys.stderr)
    return 2


def _preflight(client: Client, opts: ConvertOptions) -> str | None:
    """Check the server answers and serves the model; return an error message or None."""
    try:
        info = client.get_model(opts.model, timeout=min(opts.timeout, 15.0))
    except ClientError as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            try:
                names = sorted({m.name for m in client.list_models(timeout=10.0)})
            except ClientError:
                names = []
            known = f" (it serves: {', '.join(names)})" if names else ""
            return f"model {opts.model!r} not found on server {opts.server}{known}"
        if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return f"cannot reach server {opts.server}: {exc.message or exc.code.name}"
        if exc.code == grpc.StatusCode.UNAUTHENTICATED:
            return f"server {opts.server} refused the token (--token or $PIXFORGE_TOKEN): {exc.message}"
        return f"server {opts.server} answered {exc.code.name}: {exc.message}"
    if info.state == "failed":
        return f"model {opts.model!r} failed to load on server {opts.server}: {info.error}"
    return None


def convert(client: Client, opts: ConvertOptions) -> int:
    """Run the conversion with a connected client; return the exit code."""
    try:
        os.makedirs(opts.walk.output, exist_ok=True)
    except OSError as exc:
        return _error(f"cannot create --output {opts.walk.output}: {exc.strerror}")
    # The report describes the latest run only; a stale one would list fixed failures.
    _remove_quietly(os.path.join(opts.walk.output, REPORT_NAME))
    tally = Tally(opts.walk.output, opts.progress, progress_lines=opts.progress_lines)
    _start_counter(opts, tally)
    fatal: ClientError | None = None
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
    stopped: str | None = None
    try:
        for result in results:
            job: Job = result.source
            if result.ok:
                try:
                    write_atomically(job, result.image)  # type: ignore[arg-type]
                except OSError as exc:
                    reason = f"cannot write the output: {exc.strerror or exc}"
                    tally.failed_one(job.src, job.dst, "WRITE_ERROR", reason)
                    if exc.errno in DISK_FULL_ERRNOS:
                        stopped = f"stopped: {reason} ({job.dst}); free space and re-run to resume"
                        break
                    continue
                tally.converted_one()
                continue
            error = result.error
            assert error is not None
            tally.failed_one(job.src, job.dst, error.code_name, error.message)
            if error.code in FATAL_CODES:
                fatal = error
                break
    except RunStopped as exc:
        stopped = f"stopped: {exc}; re-run to resume"
    except KeyboardInterrupt:
        tally.close()
        print("interrupted: " + tally.summary() + " (re-run to resume)", file=sys.stderr)
        raise
    finally:
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


def run(args) -> int:
    """Entry point of `pixforge convert` (see pixforge/cli.py for the flags).

    Args:
        args: the parsed argparse namespace.

    Returns:
        0 all converted or skipped, 1 some failed, 2 usage or connection error.
    """
    try:
        opts = ConvertOptions.from_args(args)
    except UsageError as exc:
        return _error(str(exc))
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
    try:
        from pixforge.service.errors import ServerConfigError
        from pixforge.service.local import start_local_server
    except ModuleNotFoundError as exc:
        return _error(
            f"--models needs the server extra ({exc.name} is missing): pip install 'pixforge[server]'"
        )
    try:
        local = start_local_server(models_dir, opts.model)
    except ServerConfigError as exc:
        return _error(str(exc))
    with local:
        client = Client(local.address, token=local.token, timeout=opts.timeout, retry=convert_retry(0.0))
        with client:
            return convert(client, opts)
