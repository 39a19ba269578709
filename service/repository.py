"""In-memory model registry: which versions exist, their load state, and which one serves.

The on-disk layout is :mod:`pixforge.repository`'s job; this module loads each version into an
:class:`~pixforge.service.engine.Engine` (validated against the model contract, warmed up), wraps
it in a :class:`ModelRuntime` (engine + batcher + admission control) and keeps the table of
versions with their state (LOADING / READY / FAILED, with the error text).

Reloading (poll or SIGHUP) re-scans the folder, loads new or changed files *beside* the serving
ones and swaps each in atomically; a request holds its runtime through a lease, so it finishes on
the session it started with, and a retired runtime closes once its last lease ends. A broken new
file never replaces a working one.

Explicit model control (:meth:`ModelRegistry.unload`, :meth:`ModelRegistry.load`; the KServe
RepositoryModelUnload/Load RPCs) never writes to the repository: an unloaded model leaves the table
and stays out of it, whatever a poll finds, until it is loaded again.

A repository that cannot be read as a whole (folder missing, unreadable, a stale network mount) or
that turns up empty while models are loaded (an unmounted or remounting volume shows an empty
mount point) is *unavailable*, not emptied: the loaded versions keep serving, one warning is
logged, and when it is back every file whose (mtime, size) is unchanged stays as it is. Only a
model or version folder missing from a repository that still lists other entries is a removal.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from pixforge.contract import ModelContract
from pixforge.repository import ModelEntry, scan_repository

from .batcher import Batcher, BatchObserver
from .config import BatchingConfig, EngineConfig
from .engine import Engine, trt_cache_dir
from .errors import (
    ModelLoadingError,
    ModelNotFoundError,
    ModelNotReadyError,
    QueueFullError,
    RepositoryUnavailableError,
    ShuttingDownError,
)

log = logging.getLogger("pixforge.service.repository")

EngineFactory = Callable[..., Engine]  # (path, EngineConfig, name=..., cache_dir=...) -> Engine


class ModelState(enum.Enum):
    """Load state of one model version."""

    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"


class ModelRuntime:
    """The serving objects of one READY model version: engine, batcher and admission control.

    Args:
        name, version: identity (for logs and metrics).
        engine: the loaded, warmed-up engine.
        batching: batching settings; ``queue_size`` bounds the requests admitted at once.
        on_batch: optional batch observer (metrics).
    """

    def __init__(
        self,
        name: str,
        version: int,
        engine: Engine,
        batching: BatchingConfig,
        on_batch: BatchObserver | None = None,
    ):
        self.name = name
        self.version = version
        self.engine = engine
        self.contract: ModelContract = engine.contract
        self.provider = engine.provider
        self.queue_size = batching.queue_size
        self.max_batch_size = batching.max_batch_size
        # Each admitted request keeps at most max_batch_size arrays queued, so the batcher's own
        # bound is only a safety net.
        self.batcher = Batcher(
            engine.run,
            max_batch_size=batching.max_batch_size,
            max_queue_delay_ms=batching.max_queue_delay_ms,
            capacity=batching.queue_size * batching.max_batch_size,
            name=f"{name}/{version}",
            on_batch=on_batch,
            run_norm=engine.run_norm if engine.contract.norm_channels else None,
        )
        self._lock = threading.Lock()
        self._in_flight = 0
        self._retired = False
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Requests admitted and not finished."""
        return self._in_flight

    def _admit(self) -> None:
        with self._lock:
            if self._in_flight >= self.queue_size:
                raise QueueFullError(
                    f"model {self.name} is busy: {self._in_flight} requests queued or running "
                    f"(queue_size {self.queue_size}); retry later"
                )
            self._in_flight += 1

    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            close = self._retired and self._in_flight == 0 and not self._closed
            self._closed = self._closed or close
        if close:
            self._close()

    def retire(self) -> None:
        """Stop handing this runtime out; close it when its last request is done."""
        with self._lock:
            self._retired = True
            close = self._in_flight == 0 and not self._closed
            self._closed = self._closed or close
        if close:
            self._close()

    def _close(self) -> None:
        self.batcher.close(drain=True, timeout=30)
        self.engine.close()
        log.info("model %s version %d unloaded", self.name, self.version)


@dataclass(frozen=True)
class ModelVersion:
    """One row of the registry (an immutable snapshot; the registry swaps rows, never edits them).

    Attributes:
        name, version, path: identity and file.
        state: LOADING, READY or FAILED.
        error: why it FAILED, or why a reload of a changed file was refused while it keeps serving.
        contract: the parsed contract (None until loaded).
        provider: execution provider that runs it ('' until loaded).
        runtime: serving objects when READY.
        stamp: (name, mtime_ns, size) of each model file of the version (the reference and its
            precision variants) when it was loaded, to spot changes.
        precision: precision of the file that runs ("fp32", "fp16", ...; '' until loaded).
        variants: precisions present on disk for this version (the reference's included).
    """

    name: str
    version: int
    path: Path
    state: ModelState
    error: str = ""
    contract: ModelContract | None = None
    provider: str = ""
    runtime: ModelRuntime | None = field(default=None, repr=False, compare=False)
    stamp: tuple[tuple[str, int, int], ...] = ()
    loaded_at: float = 0.0
    precision: str = ""
    variants: tuple[str, ...] = ()


@dataclass
class ReloadSummary:
    """What a (re)load did, by "name/version"."""

    loaded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # changed file refused, previous one still serving
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # Why the repository could not be scanned ('' when it could); the table was left untouched.
    unavailable: str = ""


def _stamp(entry: ModelEntry) -> tuple[tuple[str, int, int], ...]:
    """(name, mtime_ns, size) of every model file of the version: a new, changed or removed
    variant is a change too, since it may change which file the server picks."""
    out = []
    for path in entry.files:
        try:
            st = path.stat()
        except OSError:
            out.append((path.name, 0, 0))
            continue
        out.append((path.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


class ModelRegistry:
    """The server's table of model versions.

    Args:
        repository: model repository folder.
        engine_config: passed to every engine.
        batching: batching settings for every runtime.
        pins: model name -> version to serve instead of the highest ready one.
        engine_factory: builds an Engine (tests inject wrappers); default :class:`Engine`.
        batch_observer: (model name, version) -> batch observer (metrics), or None.
        on_change: called with the model name after its served state may have changed (health).
    """

    def __init__(
        self,
        repository: Path,
        engine_config: EngineConfig,
        batching: BatchingConfig,
        *,
        pins: dict[str, int] | None = None,
        engine_factory: EngineFactory | None = None,
        batch_observer: Callable[[str, int], BatchObserver | None] | None = None,
        on_change: Callable[[str], None] | None = None,
    ):
        self.repository = Path(repository)
        self.engine_config = engine_config
        self.batching = batching
        self.pins = dict(pins or {})
        self._factory = engine_factory or Engine
        self._observer = batch_observer
        self._on_change = on_change
        self._rows: dict[tuple[str, int], ModelVersion] = {}
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._poll_stop = threading.Event()
        self._poll_thread: threading.Thread | None = None
        self._closed = False
        self._unavailable = ""  # why the repository is unavailable now ('' = it is readable)
        # Models taken out of service by unload(): name -> the versions they had. Polls skip them.
        self._unloaded: dict[str, tuple[int, ...]] = {}

    # -- reading

    @property
    def unavailable(self) -> str:
        """Why the last scan could not read the repository ('' when it could).

        While it is unavailable the loaded versions keep serving (see :meth:`reload`).
        """
        return self._unavailable

    def versions(self) -> list[ModelVersion]:
        """Every known version, sorted by name then version (failed ones included)."""
        with self._lock:
            rows = list(self._rows.values())
        return sorted(rows, key=lambda r: (r.name, r.version))

    def names(self) -> list[str]:
        """Model names present in the registry."""
        return sorted({r.name for r in self.versions()})

    def unloaded(self) -> dict[str, tuple[int, ...]]:
        """Models unloaded by :meth:`unload` (name -> the versions they had), until loaded again."""
        with self._lock:
            return dict(self._unloaded)

    def _served_row(self, name: str, version: int) -> ModelVersion:
        """Pick the row a request for (name, version) goes to; caller holds the lock."""
        rows = [r for (n, _), r in self._rows.items() if n == name]
        if not rows and name in self._unloaded:
            raise ModelNotFoundError(
                f"model {name!r} is unloaded (RepositoryModelUnload); RepositoryModelLoad loads it again"
            )
        if not rows:
            known = ", ".join(sorted({n for n, _ in self._rows})) or "none"
            raise ModelNotFoundError(f"unknown model {name!r} (available: {known})")
        want = version or self.pins.get(name, 0)
        if want:
            row = self._rows.get((name, want))
            if row is None:
                have = ", ".join(str(r.version) for r in sorted(rows, key=lambda r: r.version))
                raise ModelNotFoundError(f"model {name!r} has no version {want} (versions: {have})")
            return row
        ready = [r for r in rows if r.state is ModelState.READY]
        if ready:
            return max(ready, key=lambda r: r.version)
        loading = [r for r in rows if r.state is ModelState.LOADING]
        return max(loading or rows, key=lambda r: r.version)

    def describe(self, name: str, version: int = 0) -> ModelVersion:
        """The row GetModel reports: the pinned version, else the served one, else the newest.

        Raises:
            ModelNotFoundError: unknown name or version.
        """
        with self._lock:
            return self._served_row(name, version)

    @contextlib.contextmanager
    def acquire(self, name: str, version: int = 0) -> Iterator[ModelRuntime]:
        """Admit one request to a model and hold its runtime until the block ends.

        Args:
            name: model name.
            version: pinned version, 0 for the served one.

        Yields:
            The READY version's ModelRuntime (usable inside the block even if a reload swaps in a
            new version meanwhile).

        Raises:
            ModelNotFoundError: unknown model/version.
            ModelLoadingError: the version is still loading (transient: UNAVAILABLE).
            ModelNotReadyError: the version failed to load.
            QueueFullError: the model already has ``queue_size`` requests in flight.
        """
        with self._lock:
            row = self._served_row(name, version)
            if row.state is ModelState.LOADING:
                raise ModelLoadingError(
                    f"model {name!r} version {row.version} is still loading; retry shortly"
                )
            if row.state is ModelState.FAILED:
                raise ModelNotReadyError(f"model {name!r} version {row.version} failed to load: {row.error}")
            runtime = row.runtime
            if runtime is None:  # only READY rows carry a runtime
                raise ModelNotReadyError(f"model {name!r} version {row.version} is not ready")
            runtime._admit()  # under the registry lock, so a concurrent swap cannot retire it first
        try:
            yield runtime
        finally:
            runtime._release()

    def runtime(self, name: str, version: int = 0) -> ModelRuntime:
        """The runtime currently serving (name, version) (for tests and benchmarks)."""
        row = self.describe(name, version)
        if row.runtime is None:
            raise ModelNotReadyError(f"model {name!r} version {row.version} is {row.state.value}")
        return row.runtime

    # -- loading

    def _set(self, row: ModelVersion) -> ModelVersion | None:
        with self._lock:
            old = self._rows.get((row.name, row.version))
            self._rows[(row.name, row.version)] = row
        return old

    def _load(self, entry: ModelEntry) -> tuple[ModelRuntime | None, str]:
        """Build a runtime for a file; returns (runtime, "") or (None, error)."""
        engine = None
        try:
            cache = trt_cache_dir(self.engine_config, self.repository) / entry.name / str(entry.version)
            engine = self._factory(entry.path, self.engine_config, name=entry.name, cache_dir=cache)
            if self.engine_config.warmup:
                engine.warmup(self.engine_config.warmup_size)
            observer = self._observer(entry.name, entry.version) if self._observer else None
            runtime = ModelRuntime(entry.name, entry.version, engine, self.batching, observer)
            return runtime, ""
        except Exception as exc:  # any load failure marks the version FAILED; the others serve
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if engine is not None:
                engine.close()
            return None, message

    def _load_entry(self, entry: ModelEntry, summary: ReloadSummary, retry_failed: bool = False) -> None:
        key = f"{entry.name}/{entry.version}"
        stamp = _stamp(entry)
        with self._lock:
            current = self._rows.get((entry.name, entry.version))
        if (
            current is not None
            and current.stamp == stamp
            and current.state is not ModelState.LOADING
            and not (retry_failed and current.state is ModelState.FAILED)
        ):
            summary.unchanged.append(key)
            return
        serving = current if current is not None and current.state is ModelState.READY else None
        if serving is None:
            self._set(ModelVersion(entry.name, entry.version, entry.path, ModelState.LOADING, stamp=stamp))
            self._changed(entry.name)
        start = time.perf_counter()
        runtime, error = self._load(entry)
        if runtime is None:
            if serving is not None:
                # A broken replacement never takes down a working version.
                self._set(
                    replace(
                        serving,
                        error=f"reload refused ({error}); still serving the previous file",
                        stamp=stamp,
                    )
                )
                summary.kept.append(key)
                log.error("model %s: changed file failed to load, previous one keeps serving: %s", key, error)
            else:
                self._set(
                    ModelVersion(
                        entry.name, entry.version, entry.path, ModelState.FAILED, error=error, stamp=stamp
                    )
                )
                summary.failed.append(key)
                log.error("model %s FAILED: %s", key, error)
            self._changed(entry.name)
            return
        engine = runtime.engine
        row = ModelVersion(
            entry.name,
            entry.version,
            entry.path,
            ModelState.READY,
            contract=engine.contract,
            provider=engine.provider,
            runtime=runtime,
            stamp=stamp,
            loaded_at=time.time(),
            precision=engine.precision,
            variants=engine.variants,
        )
        old = self._set(row)
        if old is not None and old.runtime is not None:
            old.runtime.retire()
        summary.loaded.append(key)
        log.info(
            "model %s READY on %s, %s from %s (%s, scale %d, load %.0f ms, warm-up %.0f ms)",
            key,
            engine.provider,
            engine.precision,
            engine.path.name,
            engine.contract.task,
            engine.contract.scale,
            (time.perf_counter() - start) * 1000,
            engine.warmup_ms,
        )
        self._changed(entry.name)

    def _changed(self, name: str) -> None:
        if self._on_change is not None:
            try:
                self._on_change(name)
            except Exception:
                log.exception("state-change callback failed for %s", name)

    def _scan(self) -> tuple[list[ModelEntry], str]:
        """Scan the repository: (entries, '') or ([], why it is unavailable).

        Unavailable: the scan fails (folder missing, not a directory, unreadable, stale network
        handle, I/O error), or the folder lists nothing visible while versions are loaded: an
        unmounted or remounting volume shows an empty mount point, and that must not unload
        every model. A repository that still lists something (a README, an empty model folder)
        is read as it is, so removing model folders from it unloads them.
        """
        try:
            entries = scan_repository(self.repository)
            if entries:
                return entries, ""
            with self._lock:
                loaded = bool(self._rows)
            if loaded and not any(not p.name.startswith(".") for p in self.repository.iterdir()):
                return [], f"model repository {self.repository} is empty (an unmounted or remounting volume?)"
            return entries, ""
        except OSError as exc:
            if exc.filename is None:  # scan_repository's own "is not a directory"
                return [], str(exc)
            why = exc.strerror or os.strerror(exc.errno or 0) or type(exc).__name__
            return [], f"model repository {self.repository} cannot be read: {why} ({exc.filename})"

    def _repository_unavailable(self, why: str) -> None:
        """Log an outage once (not on every poll); the table stays as it is."""
        if self._unavailable:
            log.debug("%s; still unavailable", why)
        else:
            with self._lock:
                ready = sum(1 for r in self._rows.values() if r.state is ModelState.READY)
            if ready:
                log.warning("%s; the %d loaded model version(s) keep serving until it is back", why, ready)
            else:
                log.warning("%s; no model is served until it is back", why)
        self._unavailable = why

    def reload(self) -> ReloadSummary:
        """Scan the repository and bring the table in line with it (also the initial load).

        New and changed files are loaded (changed ones replace the serving session only if they
        load); versions whose file disappeared are retired after their in-flight requests. An
        unavailable repository (see :meth:`_scan`) changes nothing: the loaded versions keep
        serving, and when it is back unchanged files stay loaded as they are.

        Returns:
            A ReloadSummary (``unavailable`` says why the scan did not count).
        """
        with self._reload_lock:
            summary = ReloadSummary()
            if self._closed:
                return summary
            entries, unavailable = self._scan()
            if unavailable:
                summary.unavailable = unavailable
                self._repository_unavailable(unavailable)
                return summary
            if self._unavailable:
                log.info("model repository %s is available again", self.repository)
                self._unavailable = ""
            with self._lock:
                unloaded = set(self._unloaded)
            self._apply([e for e in entries if e.name not in unloaded], summary)
            return summary

    def _apply(
        self, entries: list[ModelEntry], summary: ReloadSummary, only: str = "", retry_failed: bool = False
    ) -> None:
        """Bring the table in line with scanned entries (all models, or only the model ``only``)."""
        present = {(e.name, e.version) for e in entries}
        # Register every new version as LOADING first, so callers see "loading", not "unknown".
        fresh = [e for e in entries if (e.name, e.version) not in self._rows]
        for entry in fresh:
            self._set(ModelVersion(entry.name, entry.version, entry.path, ModelState.LOADING))
        for name in sorted({e.name for e in fresh}):
            self._changed(name)
        for entry in entries:
            self._load_entry(entry, summary, retry_failed)
        with self._lock:
            gone = [
                self._rows.pop(k) for k in list(self._rows) if k not in present and (not only or k[0] == only)
            ]
        for row in gone:
            if row.runtime is not None:
                row.runtime.retire()
            summary.removed.append(f"{row.name}/{row.version}")
            log.info("model %s/%d removed from the repository", row.name, row.version)
            self._changed(row.name)

    # -- explicit model control

    def unload(self, name: str) -> list[str]:
        """Take every version of a model out of service until :meth:`load` (polls skip it).

        In-flight requests finish on their runtimes, which close afterwards; new requests get
        ModelNotFoundError. Nothing is written to the repository. Unloading an unloaded model is
        a no-op. Blocking (a retired runtime may drain its batcher): call it off the event loop.

        Returns:
            The "name/version" keys taken out of service.

        Raises:
            ModelNotFoundError: the registry has no model of that name.
        """
        with self._reload_lock:
            with self._lock:
                rows = [r for (n, _), r in self._rows.items() if n == name]
                if not rows:
                    if name in self._unloaded:
                        return []
                    known = ", ".join(sorted({n for n, _ in self._rows})) or "none"
                    raise ModelNotFoundError(f"unknown model {name!r} (available: {known})")
                for row in rows:
                    del self._rows[(row.name, row.version)]
                self._unloaded[name] = tuple(sorted(r.version for r in rows))
            for row in rows:
                if row.runtime is not None:
                    row.runtime.retire()
            keys = [f"{r.name}/{r.version}" for r in sorted(rows, key=lambda r: r.version)]
            log.info("model %s unloaded on request (%s)", name, ", ".join(keys))
            self._changed(name)
            return keys

    def load(self, name: str) -> ReloadSummary:
        """(Re)load one model from the repository files (new, changed and failed versions load).

        Loads an unloaded model again. Versions whose file is unchanged keep serving as they are;
        versions gone from the folder are retired. Nothing is written to the repository. Blocking
        (loads and warms up sessions): call it off the event loop.

        Returns:
            What was done (a ReloadSummary for that model).

        Raises:
            ModelNotFoundError: the repository has no ``<name>/<version>/model.onnx``.
            RepositoryUnavailableError: the repository cannot be read now.
            ModelNotReadyError: a version failed to load (the message says why; versions that
                loaded serve).
            ShuttingDownError: the registry is closed.
        """
        with self._reload_lock:
            if self._closed:
                raise ShuttingDownError("the server is shutting down")
            entries, unavailable = self._scan()
            if unavailable:
                raise RepositoryUnavailableError(f"{unavailable}; retry when it is back")
            mine = [e for e in entries if e.name == name]
            if not mine:
                raise ModelNotFoundError(
                    f"model {name!r} is not in the repository {self.repository} "
                    f"(no {name}/<version>/model.onnx)"
                )
            with self._lock:
                self._unloaded.pop(name, None)
            summary = ReloadSummary()
            self._apply(mine, summary, only=name, retry_failed=True)
            log.info(
                "model %s loaded on request: loaded %s; failed %s; kept %s; unchanged %s; removed %s",
                name,
                summary.loaded or "-",
                summary.failed or "-",
                summary.kept or "-",
                summary.unchanged or "-",
                summary.removed or "-",
            )
            bad = [r for r in self.versions() if r.name == name and r.error]
            if bad:
                raise ModelNotReadyError(
                    f"model {name!r}: "
                    + "; ".join(
                        f"version {r.version} failed to load: {r.error}"
                        if r.state is ModelState.FAILED
                        else f"version {r.version}: {r.error}"
                        for r in bad
                    )
                )
            return summary

    def start_polling(self, interval: float) -> None:
        """Re-scan every ``interval`` seconds on a background thread (no-op for interval <= 0)."""
        if interval <= 0 or self._poll_thread is not None:
            return

        def loop() -> None:
            while not self._poll_stop.wait(interval):
                try:
                    self.reload()
                except Exception:
                    log.exception("repository poll failed")

        self._poll_thread = threading.Thread(target=loop, name="pixforge-poll", daemon=True)
        self._poll_thread.start()

    def close(self) -> None:
        """Stop polling and retire every runtime (each closes after its in-flight requests)."""
        self._poll_stop.set()
        with self._reload_lock:
            self._closed = True
            with self._lock:
                rows = list(self._rows.values())
        for row in rows:
            if row.runtime is not None:
                row.runtime.retire()
