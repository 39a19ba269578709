"""`pixforge convert` against a real server: outputs, report, exit codes, resume, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from clients_helpers import cli_env, free_port, make_image

from pixforge.cli import main
from pixforge.clients.convert import REPORT_NAME
from pixforge.clients.walk import TMP_SUFFIX
from pixforge.codec import decode_image, encode_image


def convert(capsys, server: str, *args: str) -> tuple[int, str, str]:
    """Run `pixforge convert` in-process; return (exit code, stdout, stderr)."""
    code = main(["convert", "--server", server, "--model", "invert", *args])
    out, err = capsys.readouterr()
    return code, out, err


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def report_rows(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / REPORT_NAME).read_text().splitlines()]


@pytest.fixture
def tree(tmp_path) -> Path:
    """A nested folder of good, corrupt and non-image files."""
    root = tmp_path / "in"
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    (root / "top.png").write_bytes(encode_image(make_image(1)))
    (root / "a" / "photo.JPG").write_bytes(encode_image(make_image(2), "jpeg"))
    (root / "a" / "b" / "deep.webp").write_bytes(encode_image(make_image(3), "webp", quality=100))
    (root / "c" / "gray.png").write_bytes(encode_image(make_image(4, channels=1)))
    good = encode_image(make_image(5))
    (root / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "c" / "text.jpg").write_text("this is not a jpeg")
    (root / "notes.txt").write_text("not an image")
    (root / "a" / "b" / "data.json").write_text("{}")
    return root


GOOD = {
    "top.png": "top.png",
    "a/photo.JPG": "a/photo.png",
    "a/b/deep.webp": "a/b/deep.png",
    "c/gray.png": "c/gray.png",
}
CORRUPT = {"a/truncated.png", "c/text.jpg"}


def test_nested_tree_gives_mirrored_outputs_a_report_and_exit_1(capsys, real_server, tree, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = convert(capsys, real_server.address, str(tree), "--output", str(out_dir), "--recursive")
    assert code == 1
    assert files_under(out_dir) == set(GOOD.values()) | {REPORT_NAME}
    for src, dst in GOOD.items():
        expected = 255 - decode_image((tree / src).read_bytes()).pixels
        got = decode_image((out_dir / dst).read_bytes()).pixels
        assert got.shape[:2] == expected.shape[:2]
        assert (got == (expected if expected.shape[2] == 3 else np.repeat(expected, 3, axis=2))).all()
    rows = report_rows(out_dir)
    assert {os.path.relpath(r["input"], tree) for r in rows} == CORRUPT
    assert {r["code"] for r in rows} == {"INVALID_ARGUMENT"}
    assert all(r["message"] and r["output"].endswith(".png") for r in rows)
    assert "converted 4, skipped 0, failed 2, ignored 2" in out
    for name in CORRUPT:
        assert f"FAILED {tree / name}: INVALID_ARGUMENT" in err

    # Re-run: finished outputs are skipped, the corrupt files fail again.
    code, out, _ = convert(capsys, real_server.address, str(tree), "--output", str(out_dir), "--recursive")
    assert code == 1 and "converted 0, skipped 4, failed 2" in out

    # Fix the input: exit 0 and the stale report is gone.
    for name in CORRUPT:
        (tree / name).unlink()
    code, out, _ = convert(capsys, real_server.address, str(tree), "--output", str(out_dir), "--recursive")
    assert code == 0 and "converted 0, skipped 4, failed 0" in out
    assert not (out_dir / REPORT_NAME).exists()


def test_without_recursive_only_the_top_folder_is_converted(capsys, real_server, tree, tmp_path):
    out_dir = tmp_path / "out"
    code, out, _ = convert(capsys, real_server.address, str(tree), "--output", str(out_dir))
    assert code == 0 and files_under(out_dir) == {"top.png"}
    assert "converted 1, skipped 0, failed 0, ignored 1" in out


def test_glob_suffix_format_and_overwrite(capsys, real_server, tree, tmp_path):
    out_dir = tmp_path / "out"
    args = [
        str(tree),
        "--output",
        str(out_dir),
        "--recursive",
        "--glob",
        "*.jpg",
        "--suffix",
        "_inv",
        "--format",
        "jpeg",
        "--quality",
        "90",
    ]
    code, out, _ = convert(capsys, real_server.address, *args)
    # *.jpg matches photo.JPG (case-insensitive) and the corrupt text.jpg.
    assert code == 1 and files_under(out_dir) == {"a/photo_inv.jpg", REPORT_NAME}
    assert (out_dir / "a" / "photo_inv.jpg").read_bytes().startswith(b"\xff\xd8\xff")
    before = (out_dir / "a" / "photo_inv.jpg").stat().st_mtime_ns
    code, out, _ = convert(capsys, real_server.address, *args, "--overwrite")
    assert "converted 1, skipped 0" in out
    assert (out_dir / "a" / "photo_inv.jpg").stat().st_mtime_ns >= before


def test_single_files_and_several_inputs(capsys, real_server, tree, tmp_path):
    out_dir = tmp_path / "out"
    code, out, _ = convert(
        capsys,
        real_server.address,
        str(tree / "top.png"),
        str(tree / "notes.txt"),
        str(tree / "c"),
        "--output",
        str(out_dir),
    )
    # A file named on the command line is always sent, whatever its extension.
    assert code == 1 and files_under(out_dir) == {"top.png", "gray.png", REPORT_NAME}
    assert {os.path.basename(r["input"]) for r in report_rows(out_dir)} == {"notes.txt", "text.jpg"}


def test_concurrency_does_not_change_the_bytes(capsys, real_server, tmp_path):
    src = tmp_path / "in"
    for i in range(16):
        sub = src / f"d{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i}.png").write_bytes(encode_image(make_image(i, 20 + i, 30)))
    outputs = {}
    for concurrency in ("1", "7"):
        out_dir = tmp_path / f"out{concurrency}"
        progress = ["--progress"] if concurrency == "7" else []
        code, out, err = convert(
            capsys,
            real_server.address,
            str(src),
            "--output",
            str(out_dir),
            "--recursive",
            "--concurrency",
            concurrency,
            "--format",
            "webp",
            *progress,
        )
        assert code == 0 and "converted 16" in out
        if concurrency == "7":  # forced progress bar: rate, total and ETA on stderr
            assert "img/s" in err and "16/16" in err
        outputs[concurrency] = {p: (out_dir / p).read_bytes() for p in files_under(out_dir)}
    assert len(outputs["1"]) == 16 and outputs["1"] == outputs["7"]


def test_same_stem_collision_and_output_inside_input(capsys, real_server, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "x.png").write_bytes(encode_image(make_image(1)))
    (src / "x.jpg").write_bytes(encode_image(make_image(2), "jpeg"))
    out_dir = src / "converted"  # inside the input tree: must not be walked
    for _ in range(2):
        code, out, _ = convert(capsys, real_server.address, str(src), "--output", str(out_dir), "--recursive")
        assert code == 1
        assert [r["code"] for r in report_rows(out_dir)] == ["OUTPUT_COLLISION"]
    assert files_under(out_dir) == {"x.png", REPORT_NAME}


def test_the_same_file_given_twice_is_converted_once(capsys, real_server, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "x.png").write_bytes(encode_image(make_image(1)))
    (src / "sub" / "y.png").write_bytes(encode_image(make_image(2)))
    (src / "notes.txt").write_text("not an image")
    os.symlink(src, tmp_path / "link")  # the same folder under another name
    out_dir = tmp_path / "out"
    # Named twice, named and inside a named folder, and the folder again through a symlink: no
    # duplicate is an OUTPUT_COLLISION with itself, none is converted (or ignored) twice.
    inputs = [
        str(src / "x.png"),
        str(src / "x.png"),
        str(src),
        str(tmp_path / "link"),
        str(src / "sub" / "y.png"),
    ]
    code, out, err = convert(capsys, real_server.address, *inputs, "--output", str(out_dir), "--recursive")
    assert code == 0, err
    assert "converted 2, skipped 0, failed 0, ignored 1" in out and "FAILED" not in err
    assert files_under(out_dir) == {"x.png", "sub/y.png"}
    code, out, _ = convert(
        capsys, real_server.address, *inputs, "--output", str(out_dir), "--recursive", "--dry-run"
    )
    assert code == 0 and "would convert 0, skip 2 (output exists), fail 0, ignore 1" in out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_an_input_that_is_no_regular_file_is_refused_unread(capsys, tmp_path):
    from pixforge.clients.images import ImageInputError, image_bytes

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    unreachable = f"127.0.0.1:{free_port()}"  # refused before any server is asked
    specials = [fifo] + [Path(d) for d in ("/dev/zero",) if os.path.exists(d)]
    for special in specials:  # reading them would block for ever (fifo) or never end (/dev/zero)
        code, _, err = convert(
            capsys, unreachable, str(special), "--output", str(tmp_path / "o"), "--dry-run"
        )
        assert code == 2 and "input is not a regular file or folder" in err and err.count("\n") == 1
    # The client library refuses a pipe too, at once rather than waiting for a writer.
    outcome: list[str] = []

    def read() -> None:
        try:
            image_bytes(str(fifo))
        except ImageInputError as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # the bug: unblock the reader by writing, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not reader.is_alive() and outcome and "not a regular file" in outcome[0]


@pytest.mark.parametrize(
    "flag, value, why",
    [
        ("--timeout", "inf", "finite"),
        ("--timeout", "nan", "finite"),
        ("--timeout", "0", "> 0"),
        ("--timeout", "-1", "> 0"),
        ("--timeout", "1e300", "at most"),  # gRPC's deadline overflows: every image would time out
        ("--timeout", "soon", "number of seconds"),
        ("--retry-seconds", "nan", "finite"),
        ("--retry-seconds", "inf", "finite"),
        ("--retry-seconds", "-1", ">= 0"),
    ],
)
def test_bad_seconds_flags_are_refused_at_parsing(capsys, tmp_path, flag, value, why):
    (tmp_path / "x.png").write_bytes(encode_image(make_image(1)))
    with pytest.raises(SystemExit) as info:
        main(
            ["convert", "--model", "m", str(tmp_path / "x.png"), "--output", str(tmp_path / "o"), flag, value]
        )
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {flag}: must be" in err and why in err and repr(value) in err


def test_zero_timeout_is_refused_by_the_options_too_and_zero_retry_seconds_allowed(tmp_path):
    from types import SimpleNamespace

    from pixforge.cli import build_parser
    from pixforge.clients.convert import ConvertOptions
    from pixforge.errors import UsageError

    (tmp_path / "x.png").write_bytes(encode_image(make_image(1)))
    argv = ["convert", "--model", "m", str(tmp_path / "x.png"), "--output", str(tmp_path / "o")]
    args = build_parser().parse_args([*argv, "--retry-seconds", "0"])  # 0: no retrying past the attempts
    assert ConvertOptions.from_args(args).retry_seconds == 0.0
    for timeout in (0.0, float("inf"), float("nan")):  # a caller building the namespace itself
        with pytest.raises(UsageError, match="--timeout must be a finite number of seconds > 0"):
            ConvertOptions.from_args(SimpleNamespace(**{**vars(args), "timeout": timeout}))


def test_dry_run_lists_work_and_touches_nothing(capsys, tree, tmp_path):
    out_dir = tmp_path / "out"
    unreachable = f"127.0.0.1:{free_port()}"  # a dry run never connects
    code, out, _ = convert(
        capsys, unreachable, str(tree), "--output", str(out_dir), "--recursive", "--dry-run"
    )
    assert code == 0 and not out_dir.exists()
    assert f"{tree / 'a' / 'photo.JPG'} -> {out_dir / 'a' / 'photo.png'}" in out
    assert "would convert 6, skip 0 (output exists), fail 0, ignore 2" in out


def test_unknown_model_and_bad_flags_exit_2_with_one_line(capsys, real_server, tree, tmp_path):
    code = main(
        [
            "convert",
            "--server",
            real_server.address,
            "--model",
            "nope",
            str(tree),
            "--output",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "model 'nope' not found" in err and "it serves: invert" in err
    for bad in (["--quality", "0"], ["--concurrency", "0"], ["--suffix", "a/b"]):
        code, _, err = convert(capsys, real_server.address, str(tree), "--output", str(tmp_path / "o"), *bad)
        assert code == 2 and err.startswith("pixforge convert: ") and err.count("\n") == 1
    code, _, err = convert(
        capsys, real_server.address, str(tree / "missing"), "--output", str(tmp_path / "o")
    )
    assert code == 2 and "input not found" in err


def test_unreachable_server_exits_2_with_a_message_and_no_traceback(tree, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixforge.cli",
            "convert",
            "--server",
            f"127.0.0.1:{free_port()}",
            "--model",
            "invert",
            str(tree),
            "--output",
            str(tmp_path / "out"),
            "--timeout",
            "5",
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    assert proc.returncode == 2
    assert "pixforge convert: cannot reach server 127.0.0.1:" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_token_from_flag_or_environment(capsys, token_server, tree, tmp_path, monkeypatch):
    args = [str(tree / "top.png"), "--output", str(tmp_path / "out")]
    monkeypatch.delenv("PIXFORGE_TOKEN", raising=False)
    code, _, err = convert(capsys, token_server.address, *args)
    assert code == 2 and "refused the token" in err
    code, out, _ = convert(capsys, token_server.address, *args, "--token", "s3cret")
    assert code == 0 and "converted 1" in out
    monkeypatch.setenv("PIXFORGE_TOKEN", "s3cret")
    code, out, _ = convert(capsys, token_server.address, *args, "--overwrite")
    assert code == 0 and "converted 1" in out


def test_killed_run_resumes_with_every_file_exactly_once(capsys, slow_server, real_server, tmp_path):
    src = tmp_path / "in"
    names = []
    for i in range(60):
        sub = src / f"part{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i:03d}.png").write_bytes(encode_image(make_image(i, 48, 48)))
        names.append(f"part{i % 4}/img{i:03d}.png")
    out_dir = tmp_path / "out"
    # A stale temp file from an earlier crash must not survive or count as an output.
    (out_dir / "part0").mkdir(parents=True)
    (out_dir / "part0" / f".img000.png{TMP_SUFFIX}").write_bytes(b"partial")

    # Slow server (60 ms batching delay) and one image in flight: kill the process mid-run.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pixforge.cli",
            "convert",
            "--server",
            slow_server.address,
            "--model",
            "invert",
            str(src),
            "--output",
            str(out_dir),
            "--recursive",
            "--concurrency",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    deadline = time.monotonic() + 60
    done_before_kill = 0
    while time.monotonic() < deadline and proc.poll() is None:
        done_before_kill = sum(1 for p in out_dir.rglob("*.png"))
        if done_before_kill >= 8:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "convert finished before it could be killed: " + proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    killed_outputs = {p for p in files_under(out_dir) if not p.endswith(TMP_SUFFIX)}
    assert 8 <= len(killed_outputs) < 60
    for rel in killed_outputs:  # whatever exists after a kill is complete
        assert decode_image((out_dir / rel).read_bytes()).pixels.shape == (48, 48, 3)

    code, out, _ = convert(
        capsys, real_server.address, str(src), "--output", str(out_dir), "--recursive", "--concurrency", "4"
    )
    assert code == 0
    assert f"converted {60 - len(killed_outputs)}, skipped {len(killed_outputs)}, failed 0" in out
    assert files_under(out_dir) == set(names)  # exactly one output per input, no temp files left
    for rel in names:
        expected = 255 - decode_image((src / rel).read_bytes()).pixels
        assert (decode_image((out_dir / rel).read_bytes()).pixels == expected).all()


# ---------------------------------------- in-process --models, tiles, progress, full disk, restarts


def test_an_output_name_near_the_file_name_limit_converts(capsys, model_repo, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    name = "n" * 240 + ".png"  # 244 bytes: its temp name used to be 258, over the limit
    (src / name).write_bytes(encode_image(make_image(0, h=24, w=24)))
    out = tmp_path / "out"
    args = ["--models", str(model_repo), "--model", "invert", str(src), "--output", str(out)]
    assert main(["convert", *args]) == 0, capsys.readouterr().err
    assert (decode_image((out / name).read_bytes()).pixels == 255 - make_image(0, h=24, w=24)).all()
    assert os.listdir(out) == [name]  # no temp file left


def flat_inputs(root: Path, n: int, size: int = 24) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"img{i:03d}.png").write_bytes(encode_image(make_image(i, h=size, w=size)))
    return root


def test_in_process_convert_equals_the_served_output_byte_for_byte(capsys, real_server, model_repo, tmp_path):
    src = flat_inputs(tmp_path / "in", 5)
    served, local = tmp_path / "served", tmp_path / "local"
    assert convert(capsys, real_server.address, str(src), "--output", str(served))[0] == 0
    code = main(
        ["convert", "--models", str(model_repo), "--model", "invert", str(src), "--output", str(local)]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "converted 5" in out
    assert files_under(local) == files_under(served)
    for name in files_under(served):
        assert (local / name).read_bytes() == (served / name).read_bytes()


def test_in_process_convert_names_missing_models_and_excludes_server(capsys, model_repo, tmp_path):
    src = flat_inputs(tmp_path / "in", 1)
    code = main(
        ["convert", "--models", str(model_repo), "--model", "nope", str(src), "--output", str(tmp_path / "o")]
    )
    _, err = capsys.readouterr()
    assert code == 2 and "'nope' is not in" in err and "invert" in err
    with pytest.raises(SystemExit) as info:  # argparse: --server and --models exclude each other
        main(
            [
                "convert",
                "--models",
                str(model_repo),
                "--server",
                "x:1",
                "--model",
                "invert",
                str(src),
                "--output",
                "o",
            ]
        )
    assert info.value.code == 2


def test_tile_flag_reaches_the_server(capsys, model_repo, tmp_path, monkeypatch):
    from pixforge.service.pipeline import Pipeline

    # Spied where the server unpacks the request (--models runs the server in this process), so
    # the options must have crossed the client's request building and the gRPC message.
    seen = []
    real = Pipeline.translate

    def spy(self, job, *args, **kwargs):
        seen.append((job.options.tile_size, job.options.tile_overlap))
        return real(self, job, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "translate", spy)
    src = flat_inputs(tmp_path / "in", 2, size=160)
    out = tmp_path / "out"
    args = ["--models", str(model_repo), "--model", "invert", str(src), "--output", str(out)]
    assert main(["convert", *args, "--tile", "64", "--tile-overlap", "8"]) == 0
    assert seen == [(64, 8)] * 3  # the preflight's probe of the options, then the two images
    expected = 255 - make_image(0, h=160, w=160)
    assert (decode_image((out / "img000.png").read_bytes()).pixels == expected).all()


def test_progress_lines_when_stderr_is_not_a_terminal(capsys, real_server, tmp_path, monkeypatch):
    import pixforge.clients.convert as convert_module

    monkeypatch.setattr(convert_module, "PROGRESS_EVERY_S", 0.0)
    src = flat_inputs(tmp_path / "in", 4)
    code, _, err = convert(capsys, real_server.address, str(src), "--output", str(tmp_path / "out"))
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("progress: ")]
    assert lines and "images/s" in lines[-1]


def test_full_disk_stops_with_one_line_exit_2_and_a_valid_report(capsys, real_server, tmp_path, monkeypatch):
    import errno

    import pixforge.clients.convert as convert_module

    real_write = convert_module.write_atomically
    calls = []

    def full_after_two(job, data):
        calls.append(job.dst)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(job, data)

    monkeypatch.setattr(convert_module, "write_atomically", full_after_two)
    src = flat_inputs(tmp_path / "in", 8)
    out_dir = tmp_path / "out"
    code, out, err = convert(
        capsys, real_server.address, str(src), "--output", str(out_dir), "--concurrency", "1"
    )
    assert code == 2
    assert "Traceback" not in err
    stop_lines = [line for line in err.splitlines() if line.startswith("pixforge convert: stopped:")]
    assert len(stop_lines) == 1 and "No space left" in stop_lines[0]
    rows = report_rows(out_dir)  # every line parses: valid JSON Lines
    assert [r["code"] for r in rows] == ["WRITE_ERROR"]
    assert len(calls) == 3  # nothing more was attempted after the disk filled up


def test_report_stays_valid_jsonl_when_its_own_write_fails(tmp_path):
    from pixforge.clients.convert import RunStopped, Tally

    tally = Tally(str(tmp_path), progress=False)
    tally.failed_one("a.png", "a.out.png", "INVALID_ARGUMENT", "bad")

    class Full:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def write(self, text):
            self.inner.write(text[: len(text) // 2])  # a partial line reaches the file
            raise OSError(28, "No space left on device")

    tally._report = Full(tally._report)
    with pytest.raises(RunStopped):
        tally.failed_one("b.png", "b.out.png", "INVALID_ARGUMENT", "bad again")
    tally.close()
    assert [r["input"] for r in report_rows(tmp_path)] == ["a.png"]


def test_item_over_a_limit_is_sent_once_not_retried(model_repo):
    from clients_helpers import start_server as start

    from pixforge.clients.client import Client
    from pixforge.clients.retry import RetryPolicy

    handle = start(model_repo, limits__max_message_bytes=128 * 1024)
    try:
        noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
        retry = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.02, retry_seconds=30)
        with Client(handle.address, retry=retry) as client:
            (result,) = list(client.translate_many([encode_image(noise)], "invert"))
        assert result.error is not None and result.error.code_name == "RESOURCE_EXHAUSTED"
        assert "limits.max_message_bytes" in result.error.message
        assert result.attempts == 1
    finally:
        handle.stop(0)


def test_convert_rides_out_a_server_restart(model_repo, tmp_path):
    from clients_helpers import start_server as start

    port = free_port()
    src = flat_inputs(tmp_path / "in", 30)
    out_dir = tmp_path / "out"
    first = start(model_repo, port=port, batching__max_queue_delay_ms=60.0)
    cmd = [
        sys.executable,
        "-m",
        "pixforge.cli",
        "convert",
        "--server",
        f"127.0.0.1:{port}",
        "--model",
        "invert",
    ]
    proc = subprocess.Popen(
        [*cmd, str(src), "--output", str(out_dir), "--concurrency", "1", "--retry-seconds", "60"],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(out_dir.glob("*.png"))) < 5:
            time.sleep(0.05)
        first.stop(0)  # the server goes away mid-run ...
        time.sleep(4.0)
        # ... and comes back on the same port, answering "still loading" for 3 s (UNAVAILABLE,
        # which convert retries; FAILED_PRECONDITION would fail the items that arrive meanwhile).
        second = start(model_repo, load_seconds=3.0, port=port)
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            second.stop(0)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "converted" in out and len(list(out_dir.glob("*.png"))) == 30


# ---------------------------------------- audit fixes: preflight, reports, signals, messages


def test_output_that_is_another_input_is_never_overwritten(capsys, real_server, tmp_path):
    src, out_dir = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    (out_dir / "sub").mkdir(parents=True)
    (src / "sub" / "a.jpg").write_bytes(encode_image(make_image(1), "jpeg"))  # -> out/sub/a.png ...
    (out_dir / "sub" / "a.png").write_bytes(encode_image(make_image(2)))  # ... named as an input
    before = (out_dir / "sub" / "a.png").read_bytes()
    args = [str(src), str(out_dir / "sub" / "a.png"), "--output", str(out_dir), "--recursive"]
    for overwrite in ([], ["--overwrite"]):
        code, out, _ = convert(capsys, real_server.address, *args, *overwrite)
        assert code == 1 and "skipped 0, failed 1" in out
        assert [r["code"] for r in report_rows(out_dir)] == ["OUTPUT_IS_INPUT"]
        assert (out_dir / "sub" / "a.png").read_bytes() == before
    # `convert ow/* --output ow`: inputs beside their outputs need --suffix, before anything is read.
    ow = tmp_path / "ow"
    ow.mkdir()
    (ow / "a.jpg").write_bytes(encode_image(make_image(1), "jpeg"))
    (ow / "a.png").write_bytes(before)
    code, _, err = convert(
        capsys, real_server.address, str(ow / "a.jpg"), str(ow / "a.png"), "--output", str(ow), "--overwrite"
    )
    assert code == 2 and "add --suffix" in err and (ow / "a.png").read_bytes() == before


def test_tile_values_the_server_refuses_stop_the_run_once_before_it_starts(capsys, real_server, tmp_path):
    src = flat_inputs(tmp_path / "in", 3)
    out_dir = tmp_path / "out"
    for flags, words in (
        (["--tile", "8"], "options.tile_size must be within"),  # the server's tiling bounds
        (["--tile-overlap", "200"], "less than half the tile"),  # the model's default tile is 256
        (["--tile", "64", "--tile-overlap", "32"], "less than half of --tile 64"),
    ):
        code, out, err = convert(capsys, real_server.address, str(src), "--output", str(out_dir), *flags)
        assert code == 2 and words in err, err
        assert err.count("\n") == 1 and "FAILED" not in err and not out_dir.exists()
    code, _, err = convert(
        capsys, real_server.address, str(src), "--output", str(out_dir), "--tile", "5000000000"
    )
    assert code == 2 and "--tile must be within 0..4294967295" in err and err.count("\n") == 1


def test_an_unexpected_value_error_mid_run_is_one_line_and_exit_2(capsys, real_server, tmp_path, monkeypatch):
    import pixforge.clients.convert as convert_module

    def bad_plan(opts, tally):
        raise ValueError("Value out of range: 5000000000")
        yield  # a generator, as plan() is

    monkeypatch.setattr(convert_module, "plan", bad_plan)
    src = flat_inputs(tmp_path / "in", 1)
    code, _, err = convert(capsys, real_server.address, str(src), "--output", str(tmp_path / "out"))
    assert code == 2 and err == "pixforge convert: stopped: Value out of range: 5000000000\n"


def test_a_tiny_timeout_is_no_unreachable_server(capsys, tmp_path, monkeypatch):
    from clients_helpers import FakeServer, FakeServicer

    real_get_model = FakeServicer.GetModel

    def slow_get_model(self, request, context):  # answers, but slower than one image's --timeout
        time.sleep(0.3)
        return real_get_model(self, request, context)

    monkeypatch.setattr(FakeServicer, "GetModel", slow_get_model)
    server = FakeServer()
    try:
        src = flat_inputs(tmp_path / "in", 2)
        code, _, err = convert(
            capsys, server.address, str(src), "--output", str(tmp_path / "out"), "--timeout", "0.1"
        )
    finally:
        server.stop()
    assert code == 0 and "cannot reach" not in err, err


def test_a_server_that_does_not_answer_is_worded_as_such(capsys, tmp_path, monkeypatch):
    import socket

    import pixforge.clients.convert as convert_module

    monkeypatch.setattr(convert_module, "PREFLIGHT_TIMEOUT_S", 0.5, raising=False)
    silent = socket.socket()  # accepts connections, never speaks HTTP/2
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        src = flat_inputs(tmp_path / "in", 1)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        code, _, err = convert(capsys, address, str(src), "--output", str(tmp_path / "out"), "--timeout", "1")
    finally:
        silent.close()
    assert code == 2 and f"server {address} did not answer within 0.5 s" in err


def test_a_server_that_stops_answering_stops_the_run_after_a_streak_of_timeouts(
    capsys, tmp_path, monkeypatch
):
    from clients_helpers import FakeServer, FakeServicer

    import pixforge.clients.convert as convert_module

    def stuck(self, request_iterator, context):  # takes the items, never answers
        for _item in request_iterator:
            pass
        time.sleep(30)
        yield from ()

    monkeypatch.setattr(FakeServicer, "TranslateStream", stuck)
    monkeypatch.setattr(convert_module, "DEADLINE_STREAK", 3)
    server = FakeServer()
    try:
        src = flat_inputs(tmp_path / "in", 12)
        start = time.monotonic()
        code, out, err = convert(
            capsys, server.address, str(src), "--output", str(tmp_path / "out"), "--timeout", "0.3",
            "--concurrency", "1",
        )  # fmt: skip
        took = time.monotonic() - start
    finally:
        server.stop()
    assert code == 2 and "3 images in a row got no answer within --timeout 0.3 s" in err, err
    assert took < 10, took  # not 12 images x 0.3 s each and the stream's own deadline after
    assert "failed 3," in out and len(report_rows(tmp_path / "out")) == 3


def test_an_unreadable_input_file_is_reported_as_unreadable(capsys, real_server, tmp_path, monkeypatch):
    src = flat_inputs(tmp_path / "in", 2)
    real_open = os.open

    def locked(path, *args, **kwargs):  # chmod 000 does not stop root, so refuse the open itself
        if os.fspath(path).endswith("img001.png"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", locked)
    out_dir = tmp_path / "out"
    code, _, err = convert(capsys, real_server.address, str(src), "--output", str(out_dir))
    assert code == 1
    (row,) = report_rows(out_dir)
    assert row["input"] == str(src / "img001.png") and row["code"] == "UNREADABLE"
    assert "Permission denied" in row["message"]


def test_disk_full_stops_with_the_write_as_the_cause_not_the_report(
    capsys, real_server, tmp_path, monkeypatch
):
    import errno

    import pixforge.clients.convert as convert_module

    def full(job, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def report_full(self, line):  # the report lives on the same full disk
        raise convert_module.RunStopped(
            f"cannot write the report {self.report_path}: No space left on device"
        )

    monkeypatch.setattr(convert_module, "write_atomically", full)
    monkeypatch.setattr(convert_module.Tally, "_append_report", report_full)
    src = flat_inputs(tmp_path / "in", 2)
    code, _, err = convert(capsys, real_server.address, str(src), "--output", str(tmp_path / "out"))
    (stop,) = [line for line in err.splitlines() if line.startswith("pixforge convert: stopped:")]
    assert code == 2 and "cannot write the output: No space left on device" in stop


def test_progress_lines_come_while_nothing_completes(capsys, tmp_path, monkeypatch):
    import pixforge.clients.convert as convert_module

    monkeypatch.setattr(convert_module, "PROGRESS_EVERY_S", 0.05)
    tally = convert_module.Tally(str(tmp_path), progress=False, progress_lines=True)
    time.sleep(0.5)  # a stall: no image completes
    tally.close()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("progress: 0 ")]
    assert len(lines) >= 2


def test_names_with_control_characters_cannot_break_printed_lines(capsys, real_server, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "evil\nFAILED x.png").write_bytes(b"not an image")
    out_dir = tmp_path / "out"
    code, out, _ = convert(capsys, real_server.address, str(src), "--output", str(out_dir), "--dry-run")
    assert code == 0 and out.count("\n") == 2 and "evil\\nFAILED x.png ->" in out
    code, _, err = convert(capsys, real_server.address, str(src), "--output", str(out_dir))
    assert code == 1
    (failed,) = [line for line in err.splitlines() if "FAILED" in line]
    assert failed.startswith(f"FAILED {src}/evil\\nFAILED x.png: INVALID_ARGUMENT")
    assert report_rows(out_dir)[0]["input"] == str(src / "evil\nFAILED x.png")  # JSON keeps it exact


def test_dry_run_exits_1_when_some_inputs_would_fail(capsys, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "x.png").write_bytes(encode_image(make_image(1)))
    (src / "x.jpg").write_bytes(encode_image(make_image(2), "jpeg"))  # collides with x.png
    code, out, _ = convert(
        capsys, f"127.0.0.1:{free_port()}", str(src), "--output", str(tmp_path / "o"), "--dry-run"
    )
    assert code == 1 and "would convert 1, skip 0 (output exists), fail 1" in out


def test_dry_run_with_models_checks_the_model_exists(capsys, model_repo, tmp_path):
    src = flat_inputs(tmp_path / "in", 1)
    argv = ["convert", "--models", str(model_repo), str(src), "--output", str(tmp_path / "o"), "--dry-run"]
    assert main([*argv, "--model", "invert"]) == 0
    capsys.readouterr()
    assert main([*argv, "--model", "nope"]) == 2
    assert "'nope' is not in" in capsys.readouterr().err


def test_an_empty_server_is_refused_not_taken_as_localhost(capsys, tmp_path):
    src = flat_inputs(tmp_path / "in", 1)
    code, _, err = convert(capsys, "", str(src), "--output", str(tmp_path / "o"))
    assert code == 2 and "--server must not be empty" in err


def test_models_mode_warns_about_server_only_flags_given(capsys, model_repo, tmp_path, monkeypatch):
    src = flat_inputs(tmp_path / "in", 1)
    argv = [
        "convert",
        "--models",
        str(model_repo),
        "--model",
        "invert",
        str(src),
        "--output",
        str(tmp_path / "o"),
    ]
    monkeypatch.setenv("PIXFORGE_TOKEN", "from-the-environment")  # not given on this command line
    assert main([*argv, "--overwrite"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--token", "t", "--tls", "--retry-seconds", "120"]) == 0
    (warning,) = capsys.readouterr().err.splitlines()
    assert "ignoring --token, --tls, --retry-seconds with --models" in warning


def test_models_mode_load_error_names_the_users_path_once(capsys, tmp_path):
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    src = flat_inputs(tmp_path / "in", 1)
    code = main(
        ["convert", "--models", str(repo), "--model", "broken", str(src), "--output", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 2 and str(repo / "broken" / "1" / "model.onnx") in err
    assert "pixforge-convert-" not in err and err.count("not a loadable ONNX model") == 1


def test_the_first_signal_stops_the_run_and_later_ones_are_ignored():
    from pixforge.clients.convert import _Signals

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with _Signals() as signals:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here
        os.kill(os.getpid(), signal.SIGINT)  # during cleanup: ignored, no second KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    assert signals.exit_code == 143
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # still ignored: the process is exiting
    signals.restore()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == previous
    with _Signals() as quiet:  # no signal: the handlers are put back on exit
        pass
    assert quiet.exit_code == 130 and signal.getsignal(signal.SIGINT) == previous[0]


def _signal_models_run(model_repo: Path, tmp_path: Path, signals: list[tuple[float, int]]):
    """Run `convert --models` in a subprocess, send ``signals`` ((delay, signum), the first delay
    counted from the first output) and return (returncode, stdout, stderr, leaked temp folders)."""
    src = tmp_path / "in"
    src.mkdir()
    # 1024 px images in 64 px tiles: ~0.2 s of CPU work each, so the run is mid-flight and the
    # server's workers are busy when the signals come. A gradient keeps the files small.
    image = np.zeros((1024, 1024, 3), np.uint8) + (np.arange(1024) % 256).astype(np.uint8)[None, :, None]
    for i in range(4):
        (src / f"img{i}.png").write_bytes(encode_image(image))
    out_dir, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    argv = ["--models", str(model_repo), "--model", "invert", str(src), "--output", str(out_dir)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pixforge.cli", "convert", *argv, "--tile", "64", "--concurrency", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**cli_env(), "TMPDIR": str(tmp)},  # where the in-process server's repository goes
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(out_dir.glob("*.png")) and proc.poll() is None:
            time.sleep(0.005)
        assert proc.poll() is None, "convert ended before the signal"
        for delay, signum in signals:
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return (
        proc.returncode,
        out,
        err,
        [p.name for p in tmp.iterdir() if p.name.startswith("pixforge-convert-")],
    )


def test_sigterm_in_models_mode_cleans_up_and_exits_143(model_repo, tmp_path):
    code, out, err, leaked = _signal_models_run(model_repo, tmp_path, [(0.0, signal.SIGTERM)])
    assert code == 143 and leaked == [] and "Traceback" not in err
    assert out.splitlines()[-1].startswith("converted ")  # the summary, on stdout as documented
    assert "interrupted by SIGTERM" in err


def test_a_second_ctrl_c_during_cleanup_is_ignored(model_repo, tmp_path):
    code, out, err, leaked = _signal_models_run(
        model_repo, tmp_path, [(0.0, signal.SIGINT), (0.05, signal.SIGINT)]
    )
    assert code == 130 and leaked == [] and "Traceback" not in err and "terminate called" not in err
    assert out.splitlines()[-1].startswith("converted ")


def test_unreadable_is_told_from_a_bad_image_by_the_errors_cause(tmp_path):
    import grpc

    from pixforge.clients.convert import _unreadable_reason
    from pixforge.clients.errors import InvalidArgumentError
    from pixforge.clients.images import ImageInputError
    from pixforge.clients.walk import Job

    readable = tmp_path / "x.png"
    readable.write_bytes(b"x")
    job = Job(str(readable), str(tmp_path / "out.png"))
    read_error = ImageInputError("cannot read image file 'x.png': Permission denied")
    read_error.__cause__ = PermissionError(13, "Permission denied")
    error = InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, str(read_error))
    error.__cause__ = read_error  # as the client library may keep it
    assert _unreadable_reason(job, error) == "Permission denied"
    corrupt = InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "not a supported image", "127.0.0.1:1")
    assert _unreadable_reason(job, corrupt) is None  # the server's answer: the file was read
    gone = Job(str(tmp_path / "gone.png"), str(tmp_path / "out.png"))
    assert _unreadable_reason(gone, InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "x")) == (
        "No such file or directory"
    )
