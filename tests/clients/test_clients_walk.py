"""Input discovery and output naming for `pixforge convert`: lazy, mirrored, filtered, atomic."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from pixforge.clients import convert as convert_mod
from pixforge.clients.walk import TMP_SUFFIX, Job, WalkOptions, count_inputs, walk


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folder_trees_are_mirrored_with_suffix_and_format_extension(tmp_path):
    touch(tmp_path / "in" / "a" / "b" / "x.TIFF")
    touch(tmp_path / "in" / "y.jpeg")
    touch(tmp_path / "in" / "readme.md")
    touch(tmp_path / "single.bmp")
    opts = WalkOptions(output=str(tmp_path / "out"), recursive=True, fmt="jpeg", suffix="_sr")
    items = list(walk([str(tmp_path / "in"), str(tmp_path / "single.bmp")], opts))
    jobs = {
        os.path.relpath(j.src, tmp_path): os.path.relpath(j.dst, tmp_path) for k, j in items if k == "job"
    }
    assert jobs == {
        "in/a/b/x.TIFF": "out/a/b/x_sr.jpg",
        "in/y.jpeg": "out/y_sr.jpg",
        "single.bmp": "out/single_sr.jpg",
    }
    assert [os.path.basename(v) for k, v in items if k == "ignored"] == ["readme.md"]
    assert count_inputs([str(tmp_path / "in")], opts) == 2


def test_glob_replaces_the_extension_filter_case_insensitively(tmp_path):
    touch(tmp_path / "A.JPG")
    touch(tmp_path / "b.png")
    touch(tmp_path / "c.jpg.txt")
    opts = WalkOptions(output=str(tmp_path / "out"), glob="*.jpg")
    kinds = {os.path.basename(v.src if k == "job" else v): k for k, v in walk([str(tmp_path)], opts)}
    assert kinds == {"A.JPG": "job", "b.png": "ignored", "c.jpg.txt": "ignored"}


def test_walk_is_lazy_and_skips_the_output_folder_and_symlinked_folders(tmp_path, monkeypatch):
    for i in range(5):
        touch(tmp_path / "in" / f"d{i}" / "img.png")
    touch(tmp_path / "in" / "out" / "old.png")  # the output folder inside the input tree
    os.symlink(tmp_path / "in", tmp_path / "in" / "loop")  # a cycle, never followed
    scanned = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: scanned.append(p) or real_scandir(p))
    opts = WalkOptions(output=str(tmp_path / "in" / "out"), recursive=True)
    items = walk([str(tmp_path / "in")], opts)
    kind, first = next(items)
    assert kind == "job" and len(scanned) == 2  # the root and the first sub-folder only
    rest = list(items)
    assert len(rest) == 4 and not any("old.png" in str(v) or "loop" in str(v) for _, v in rest)


def test_temp_files_are_never_inputs(tmp_path):
    touch(tmp_path / f".x.png{TMP_SUFFIX}")
    assert list(walk([str(tmp_path)], WalkOptions(output=str(tmp_path / "o"), glob="*"))) == []


def test_write_atomically_leaves_no_partial_file_on_failure(tmp_path, monkeypatch):
    job = Job(str(tmp_path / "in.png"), str(tmp_path / "out" / "x.png"))
    convert_mod.write_atomically(job, b"complete")
    assert (tmp_path / "out" / "x.png").read_bytes() == b"complete"

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        convert_mod.write_atomically(job, b"new")
    assert (tmp_path / "out" / "x.png").read_bytes() == b"complete"
    assert os.listdir(tmp_path / "out") == ["x.png"]


def test_plan_skips_finished_outputs_and_clears_their_stale_temp_files(tmp_path):
    touch(tmp_path / "in" / "done.png")
    touch(tmp_path / "in" / "todo.png")
    touch(tmp_path / "out" / "done.png", b"finished")
    stale = touch(tmp_path / "out" / f".done.png{TMP_SUFFIX}", b"partial")  # from a killed --overwrite run
    opts = convert_mod.ConvertOptions.from_args(_args(tmp_path, recursive=False))
    tally = convert_mod.Tally(opts.walk.output, progress=False, write_report=False)
    todo = [os.path.basename(j.src) for j in convert_mod.plan(opts, tally)]
    assert todo == ["todo.png"] and tally.skipped == 1 and not stale.exists()
    overwrite = convert_mod.ConvertOptions.from_args(_args(tmp_path, recursive=False, overwrite=True))
    assert sorted(os.path.basename(j.src) for j in convert_mod.plan(overwrite, tally)) == [
        "done.png",
        "todo.png",
    ]


def _args(tmp_path, **changes):
    args = dict(
        inputs=[str(tmp_path / "in")],
        server="127.0.0.1:1",
        model="m",
        output=str(tmp_path / "out"),
        recursive=True,
        glob=None,
        format="png",
        quality=95,
        concurrency=2,
        overwrite=False,
        suffix="",
        dry_run=False,
        token=None,
    )
    args.update(changes)
    return SimpleNamespace(**args)


def test_in_place_conversion_needs_a_suffix_and_never_converts_its_outputs(tmp_path):
    touch(tmp_path / "in" / "a.png")
    touch(tmp_path / "in" / "sub" / "b.jpg")
    touch(tmp_path / "in" / "sub" / "b_inv.png")  # an output of an earlier in-place run
    with pytest.raises(convert_mod.UsageError, match="--suffix"):
        convert_mod.ConvertOptions.from_args(_args(tmp_path, output=str(tmp_path / "in")))
    opts = convert_mod.ConvertOptions.from_args(_args(tmp_path, output=str(tmp_path / "in"), suffix="_inv"))
    tally = convert_mod.Tally(opts.walk.output, progress=False, write_report=False)
    jobs = {
        os.path.relpath(j.src, tmp_path): os.path.relpath(j.dst, tmp_path)
        for j in convert_mod.plan(opts, tally)
    }
    assert jobs == {"in/a.png": "in/a_inv.png"} and tally.skipped == 1  # b.jpg -> b_inv.png exists


def test_an_output_that_is_its_own_input_is_refused(tmp_path):
    touch(tmp_path / "in" / "x.png")
    opts = convert_mod.ConvertOptions.from_args(
        _args(tmp_path, inputs=[str(tmp_path / "in" / "x.png")], output=str(tmp_path / "in"), overwrite=True)
    )
    tally = convert_mod.Tally(opts.walk.output, progress=False, write_report=False)
    assert list(convert_mod.plan(opts, tally)) == [] and tally.failed == 1


def test_temp_name_of_a_name_near_the_limit_stays_within_it():
    # 14 bytes of prefix and suffix pushed a 242-byte output name over the 255-byte limit.
    from pixforge.clients.walk import NAME_MAX_BYTES, temp_path

    short = temp_path(os.path.join("out", "a.png"))
    assert short == os.path.join("out", f".a.png{TMP_SUFFIX}")  # unchanged where it fits
    names = ["x" * 246 + "1.png", "x" * 246 + "2.png", "é" * 122 + ".png"]
    temps = [os.path.basename(temp_path(os.path.join("out", n))) for n in names]
    for temp in temps:
        assert len(os.fsencode(temp)) <= NAME_MAX_BYTES and temp.endswith(TMP_SUFFIX)
        assert temp.startswith(".")
    assert len(set(temps)) == 3  # names that share their first 240 bytes keep distinct temp files
