"""Whether a benchmark run counts as quiet: other processes' CPU share, not the load average."""

from pixforge.bench.env import cpu_seconds, foreign_cpu_fraction
from pixforge.bench.report import load_was_quiet


def test_foreign_share_subtracts_the_bench_own_cpu():
    start = {"machine": 100.0, "own": 10.0}
    end = {"machine": 120.0, "own": 25.0}  # 20 s busy on the machine, 15 s of it the bench's
    assert foreign_cpu_fraction(start, end, seconds=10.0, cpus=2) == 0.25
    assert foreign_cpu_fraction(start, {"machine": 110.0, "own": 25.0}, 10.0, 2) == 0.0  # clamped
    assert foreign_cpu_fraction({"machine": None, "own": 0}, end, 10.0, 2) is None


def test_cpu_seconds_reads_this_machine():
    reading = cpu_seconds()
    assert reading["own"] >= 0
    assert reading["machine"] is None or reading["machine"] > 0


def test_quiet_uses_the_foreign_share_when_recorded():
    busy_load = {"load_start": [2.0], "load_end": [2.1], "environment": {"machine": {"cpus_available": 2}}}
    assert not load_was_quiet(busy_load)  # no foreign figure: the load average decides
    assert load_was_quiet({**busy_load, "foreign_cpu_fraction": 0.01})  # the load was the bench itself
    assert not load_was_quiet({**busy_load, "foreign_cpu_fraction": 0.4})
