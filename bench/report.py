"""Suite records -> ``<out>/bench/<suite>.json`` -> ``<out>/benchmarks.md`` with PNG plots.

Each suite returns a :class:`SuiteRecord` (tables, plot data, notes, raw results). The runner adds
the environment and machine load and writes it as JSON; :func:`write_report` then rebuilds the
markdown and every plot from *all* JSON files present, so suites can be run one at a time and the
document always shows the latest run of each. matplotlib is imported only to draw the plots.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pixforge.errors import PixforgeError

FORMAT = "pixforge.bench/1"
SUITE_ORDER = ("engine", "serving", "batching", "tiling", "training", "overload")
REPORT_FILE = "benchmarks.md"
DATA_DIR = "bench"
# A 1-minute load average above this fraction of the CPUs means other work competed with the bench.
QUIET_LOAD_FRACTION = 0.3
QUIET_FOREIGN_FRACTION = 0.05  # other processes may use 5 % of the CPUs and the run still counts as quiet
QUICK_FLAG = ", **quick smoke run: tiny models and iterations, not representative**"


class ReportError(PixforgeError, RuntimeError):
    """The report cannot be written (e.g. matplotlib is missing); the message says what to do."""


@dataclass
class Table:
    """One table of the report.

    Attributes:
        title: heading above it.
        columns: column names.
        rows: cells (numbers are formatted by the report).
        note: a line under the table.
    """

    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""


@dataclass
class Plot:
    """Data of one plot, drawn by the report (so it can be redrawn from the JSON alone).

    Attributes:
        file: PNG file name under ``<out>/bench/``.
        title, xlabel, ylabel: labels.
        kind: "line" (numeric x) or "bars" (grouped bars; x are category labels).
        series: ``[{"label": str, "x": [...], "y": [...]}]``; None values are gaps.
        logx / logy: logarithmic axes.
    """

    file: str
    title: str
    xlabel: str
    ylabel: str
    series: list[dict]
    kind: str = "line"
    logx: bool = False
    logy: bool = False


@dataclass
class SuiteRecord:
    """What a suite measured, in report form plus raw results."""

    suite: str
    title: str
    description: str
    quick: bool
    settings: dict = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    goals: list[dict] = field(default_factory=list)  # {"goal", "value", "met": bool|None, "detail"}
    headline: list[str] = field(default_factory=list)  # lines printed under the title (CPU, peak)
    tag: str = ""  # names a run kept beside the untagged one (e.g. "gpu"): its own JSON and plots

    def to_dict(self) -> dict:
        return asdict(self)

    def add_case_bars(self, file: str, title: str, series: list[dict], *, logy: bool = False) -> None:
        """Add a bar plot of images/s per case, one bar per series that has a point (none: no plot)."""
        plotted = [s for s in series if s["x"]]
        if plotted:
            self.plots.append(Plot(file, title, "case", "images/s", plotted, kind="bars", logy=logy))

    def apply_tag(self, tag: str) -> None:
        """Mark this record as the ``tag`` run: title, and plot files that do not overwrite others."""
        self.tag = tag
        self.title = f"{self.title} [{tag}]"
        for plot in self.plots:
            stem, dot, ext = plot.file.rpartition(".")
            plot.file = f"{stem}-{tag}.{ext}" if dot else f"{plot.file}-{tag}"


def record_key(data: dict) -> str:
    """``suite`` or ``suite-tag``: the JSON file stem and the report's name for a record."""
    return f"{data['suite']}-{data['tag']}" if data.get("tag") else data["suite"]


# --------------------------------------------------------------------------- formatting


def fmt(value: Any) -> str:
    """A table cell: floats with 3 significant-ish digits, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value == 0:
            return "0"
        a = abs(value)
        if a >= 100:
            return f"{value:.0f}"
        if a >= 10:
            return f"{value:.1f}"
        if a >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value).replace("|", "\\|")


def markdown_table(table: Table) -> str:
    """A table as GitHub markdown."""
    lines = [
        f"**{table.title}**",
        "",
        "| " + " | ".join(table.columns) + " |",
        "|" + "|".join("---" for _ in table.columns) + "|",
    ]
    for row in table.rows:
        lines.append("| " + " | ".join(fmt(c) for c in row) + " |")
    if table.note:
        lines += ["", f"_{table.note}_"]
    return "\n".join(lines)


def text_table(table: Table) -> str:
    """A table as aligned plain text (what the suites print on stdout)."""
    cells = [table.columns] + [[fmt(c) for c in row] for row in table.rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(table.columns))]
    out = [table.title]
    for k, row in enumerate(cells):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    if table.note:
        out.append(f"({table.note})")
    return "\n".join(out)


def print_record(record: SuiteRecord) -> None:
    """Print a suite's tables, goals and notes on stdout."""
    print(f"\n== {record.title}{' (quick)' if record.quick else ''} ==")
    for line in record.headline:
        print(line)
    for table in record.tables:
        print()
        print(text_table(table))
    for goal in record.goals:
        print(f"goal: {goal['goal']}: {goal.get('value')} -> {_goal_word(goal.get('met'))}")
    for note in record.notes:
        print(f"note: {note}")


def _goal_word(met: bool | None) -> str:
    return "met" if met else ("not measured" if met is None else "MISSED")


# --------------------------------------------------------------------------- JSON files


def write_suite_json(record: SuiteRecord, out_dir: Path, run_info: dict) -> Path:
    """Write ``<out_dir>/bench/<suite>[-<tag>].json``: the record plus the run information.

    Args:
        record: the suite's record.
        out_dir: the ``--out`` folder.
        run_info: environment, load averages, timestamps and duration (added by the runner).
    """
    data = {"format": FORMAT, **record.to_dict(), "run": run_info}
    path = Path(out_dir) / DATA_DIR / f"{record_key(record.to_dict())}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def load_suite_jsons(out_dir: Path) -> list[dict]:
    """Every ``<out_dir>/bench/*.json`` written by this format, in suite order."""
    found = []
    for path in sorted((Path(out_dir) / DATA_DIR).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("format") == FORMAT:
            found.append(data)
    order = {name: i for i, name in enumerate(SUITE_ORDER)}
    return sorted(found, key=lambda d: (order.get(d.get("suite", ""), len(order)), d.get("tag", "")))


# --------------------------------------------------------------------------- plots


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ReportError(
            "the benchmark plots need matplotlib: pip install 'pixforge[bench]' (or matplotlib>=3.8); "
            "the suite JSON files were written, rerun with the same --out to rebuild the report"
        ) from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def draw_plot(plot: dict, path: Path) -> None:
    """Draw one :class:`Plot` (as a dict from JSON) into a PNG file."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    series = plot["series"]
    if plot.get("kind") == "bars":
        categories = list(dict.fromkeys(x for s in series for x in s["x"]))
        width = 0.8 / max(1, len(series))
        for k, s in enumerate(series):
            ys = dict(zip(s["x"], s["y"], strict=True))
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(categories))]
            vals = [ys.get(c) for c in categories]
            ax.bar(xs, [v if v is not None else math.nan for v in vals], width, label=s["label"])
        ax.set_xticks(range(len(categories)))
        ax.set_xticklabels(categories, rotation=20 if len(categories) > 4 else 0)
    else:
        for s in series:
            pts = [(x, y) for x, y in zip(s["x"], s["y"], strict=True) if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s["label"])
        if plot.get("logx"):
            ax.set_xscale("log", base=2)
            xs = sorted({x for s in series for x in s["x"]})
            ax.set_xticks(xs)
            ax.set_xticklabels([str(x) for x in xs])
    if plot.get("logy"):
        ax.set_yscale("log")
    ax.set_title(plot["title"], fontsize=10)
    ax.set_xlabel(plot["xlabel"])
    ax.set_ylabel(plot["ylabel"])
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- markdown


def load_was_quiet(run: dict) -> bool:
    """Whether the machine was idle apart from the bench: other processes' CPU share during the
    suite (`foreign_cpu_fraction`) when recorded, else the 1-min load at start and end."""
    foreign = run.get("foreign_cpu_fraction")
    if foreign is not None:
        return foreign <= QUIET_FOREIGN_FRACTION
    cpus = run.get("environment", {}).get("machine", {}).get("cpus_available") or 1
    loads = [x[0] for x in (run.get("load_start"), run.get("load_end")) if x]
    return bool(loads) and max(loads) <= QUIET_LOAD_FRACTION * cpus + 0.3


def _machine_line(run: dict) -> str:
    env = run.get("environment", {})
    m, v = env.get("machine", {}), env.get("versions", {})
    gpus = ", ".join(g["name"] for g in m.get("gpus", [])) or "no GPU"
    if m.get("cpu_flags") is not None:
        from .env import flag_summary

        gpus += f"; {flag_summary(m['cpu_flags'])}"
    libs = ", ".join(
        f"{k} {v[k]}"
        for k in ("python", "torch", "onnxruntime", "onnxruntime-gpu", "grpcio", "numpy")
        if k in v
    )
    return (
        f"{m.get('cpu', '?')} ({m.get('cpus_available', '?')} CPUs available of "
        f"{m.get('logical_cpus', '?')}, {m.get('memory_gib', '?')} GiB RAM, {gpus}); {libs}"
    )


def _run_lines(data: dict) -> list[str]:
    run = data.get("run", {})
    lines = [
        f"- run: {run.get('started', '?')}, {run.get('duration_s', 0):.0f} s"
        f"{QUICK_FLAG if data.get('quick') else ''}",
        f"- machine: {_machine_line(run)}",
        f"- load average (1/5/15 min): {run.get('load_start')} at start, {run.get('load_end')} at end",
    ]
    if run.get("foreign_cpu_fraction") is not None:
        lines.append(
            f"- CPU used by other processes during the run: {run['foreign_cpu_fraction']:.1%} of the machine"
        )
    if not load_was_quiet(run):
        cause = (
            "other processes used the CPUs during this run"
            if run.get("foreign_cpu_fraction") is not None
            else "the load average was high; this run did not record other processes' CPU share, so "
            "part of that load may be the bench's own threads"
        )
        lines.append(
            f"- **machine load was not controlled**: {cause}, so absolute figures may be noisy and "
            "pessimistic; the ratios between cases measured side by side (interleaved) in the same run "
            "are the figures to read"
        )
    return lines


def render_markdown(records: list[dict], plot_files: dict[str, list[str]], data_dir: str = DATA_DIR) -> str:
    """The whole benchmarks.md text from suite JSON dicts.

    Args:
        records: suite JSON dicts (:func:`load_suite_jsons`).
        plot_files: record key -> PNG file names under the page's ``bench/`` folder.
        data_dir: where the JSON files are, as the page names them (``write_report`` passes
            ``<out>/bench``, e.g. ``docs/bench`` for ``--out docs``).
    """
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = [
        "# Benchmarks",
        "",
        f"Generated by `pixforge bench` from `{data_dir}/*.json` on {now}; do not edit by hand "
        "(rerun a suite and this page is rebuilt from every suite's latest JSON).",
        "",
        "```",
        "pip install 'pixforge[bench]'          # matplotlib (+ torch, onnx for the engine/training suites)",
        f"pixforge bench all --out docs          # every suite; or {'|'.join(SUITE_ORDER)}",
        "pixforge bench engine --quick --out /tmp/b   # smoke run in seconds",
        "```",
        "",
        "Each suite records the machine, library versions, providers, thread settings, its own settings "
        "and the load average at start and end (see the JSON files). Cases that are compared are measured "
        "in the same run, interleaved (A B A B ...), because ratios survive a noisy machine far better than "
        "absolute numbers do. p99 over fewer than 100 calls is an interpolation between the slowest calls.",
        "",
    ]
    goals = [
        (record_key(d) + (" (quick)" if d.get("quick") else ""), g)
        for d in records
        for g in d.get("goals", [])
    ]
    if goals:
        out += ["## Goals", "", "| suite | goal | measured | status |", "|---|---|---|---|"]
        for suite, g in goals:
            out.append(f"| {suite} | {fmt(g['goal'])} | {fmt(g.get('value'))} | {_goal_word(g.get('met'))} |")
        out.append("")
    for data in records:
        out += [f"## {data.get('title', data['suite'])}", "", data.get("description", ""), ""]
        out += _run_lines(data) + [f"- {line}" for line in data.get("headline", [])] + [""]
        for table in data.get("tables", []):
            out += [markdown_table(Table(**table)), ""]
        for name in plot_files.get(record_key(data), []):
            out += [f"![{name}]({DATA_DIR}/{name})", ""]
        if data.get("notes"):
            out += ["Notes:", ""] + [f"- {n}" for n in data["notes"]] + [""]
        settings = json.dumps(data.get("settings", {}), indent=1, sort_keys=True)
        env = json.dumps(data.get("run", {}).get("environment", {}), indent=1, sort_keys=True)
        out += [
            "<details><summary>settings and environment</summary>",
            "",
            "```json",
            settings,
            env,
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


def write_report(out_dir: Path) -> Path:
    """Rebuild ``<out_dir>/benchmarks.md`` and every plot from the suite JSON files.

    Raises:
        ReportError: no suite JSON found, or matplotlib missing while there are plots to draw.
    """
    out_dir = Path(out_dir)
    records = load_suite_jsons(out_dir)
    if not records:
        raise ReportError(f"no benchmark results under {out_dir / DATA_DIR}; run a suite first")
    plot_files: dict[str, list[str]] = {}
    for data in records:
        for plot in data.get("plots", []):
            draw_plot(plot, out_dir / DATA_DIR / plot["file"])
            plot_files.setdefault(record_key(data), []).append(plot["file"])
    path = out_dir / REPORT_FILE
    path.write_text(render_markdown(records, plot_files, (out_dir / DATA_DIR).as_posix()), encoding="utf-8")
    return path
