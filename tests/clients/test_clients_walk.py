"""Input discovery and output naming for `pixforge convert`: lazy, mirrored, filtered, atomic."""

from __future__ import annotations

import json
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
    # The output's name is a hard link of the input: --overwrite must not write through it.
    touch(tmp_path / "in" / "x.png", b"input")
    (tmp_path / "out").mkdir()
    os.link(tmp_path / "in" / "x.png", tmp_path / "out" / "x.png")
    opts = convert_mod.ConvertOptions.from_args(
        _args(tmp_path, inputs=[str(tmp_path / "in" / "x.png")], overwrite=True)
    )
    tally = convert_mod.Tally(opts.walk.output, progress=False, write_report=False)
    assert list(convert_mod.plan(opts, tally)) == [] and tally.failed == 1


def _plan(opts) -> tuple[list[str], convert_mod.Tally, list[tuple]]:
    """Run plan() and return (job inputs' names, the tally, the failures as (name, code, message))."""
    tally = convert_mod.Tally(opts.walk.output, progress=False, write_report=False)
    failures = []
    tally.failed_one = lambda src, dst, code, message: failures.append((os.path.basename(src), code, message))
    jobs = [os.path.basename(j.src) for j in convert_mod.plan(opts, tally)]
    return jobs, tally, failures


def test_file_inputs_in_the_output_folder_need_a_suffix(tmp_path):
    # `convert ow/* --output ow`: a.jpg -> ow/a.png would replace the input a.png.
    touch(tmp_path / "ow" / "a.jpg")
    touch(tmp_path / "ow" / "a.png")
    named = [str(tmp_path / "ow" / "a.jpg"), str(tmp_path / "ow" / "a.png")]
    for overwrite in (False, True):
        with pytest.raises(convert_mod.UsageError, match="--suffix"):
            convert_mod.ConvertOptions.from_args(
                _args(tmp_path, inputs=named, output=str(tmp_path / "ow"), overwrite=overwrite)
            )


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_that_is_another_input_fails_and_is_never_written(tmp_path, overwrite):
    # src/sub/a.jpg -> out/sub/a.png, which is named as an input of the same run.
    touch(tmp_path / "src" / "sub" / "a.jpg")
    touch(tmp_path / "out" / "sub" / "a.png", b"an input")
    named = [str(tmp_path / "src"), str(tmp_path / "out" / "sub" / "a.png")]
    opts = convert_mod.ConvertOptions.from_args(_args(tmp_path, inputs=named, overwrite=overwrite))
    jobs, tally, failures = _plan(opts)
    assert [(name, code) for name, code, _ in failures] == [("a.jpg", "OUTPUT_IS_INPUT")]
    assert "another input" in failures[0][2] and tally.skipped == 0
    assert jobs == ["a.png"]  # -> out/a.png
    # An output folder holding an input folder: out/sub/sub/x.png -> out/sub/x.png, an input.
    touch(tmp_path / "out" / "sub" / "sub" / "x.png")
    touch(tmp_path / "out" / "sub" / "x.png", b"an input")
    opts = convert_mod.ConvertOptions.from_args(
        _args(tmp_path, inputs=[str(tmp_path / "out" / "sub")], overwrite=overwrite)
    )
    jobs, tally, failures = _plan(opts)
    assert ("x.png", "OUTPUT_IS_INPUT") in [(name, code) for name, code, _ in failures]
    assert tally.skipped == 0 and (tmp_path / "out" / "sub" / "x.png").read_bytes() == b"an input"


def test_in_place_named_files_resume_like_a_folder(tmp_path):
    # `convert ow/* --output ow --suffix _x`, run again: the glob now names the outputs and the
    # report too; they are left out (not converted into a_x_x.png) and a.jpg's output is skipped.
    touch(tmp_path / "ow" / "a.jpg")
    touch(tmp_path / "ow" / "a_x.png", b"the first run's output")
    touch(tmp_path / "ow" / convert_mod.REPORT_NAME, b"{}")
    named = [str(p) for p in sorted((tmp_path / "ow").iterdir())]
    opts = convert_mod.ConvertOptions.from_args(
        _args(tmp_path, inputs=named, output=str(tmp_path / "ow"), suffix="_x")
    )
    jobs, tally, failures = _plan(opts)
    assert jobs == [] and failures == [] and tally.skipped == 1


def test_in_place_leaves_earlier_outputs_of_any_format_out(tmp_path):
    # `--suffix _f`, then `--suffix _f --format jpeg`: 010_f.png must not become 010_f_f.jpg.
    for name in ("010.png", "010_f.png", "011_f.jpg", "012_f.WEBP", "013_f.jpeg", "014_f.tif"):
        touch(tmp_path / "in" / name)
    opts = convert_mod.ConvertOptions.from_args(
        _args(tmp_path, output=str(tmp_path / "in"), suffix="_f", format="jpeg")
    )
    jobs, _, failures = _plan(opts)
    # A .tif is no output format: it is an input, whatever its name.
    assert sorted(jobs) == ["010.png", "014_f.tif"] and failures == []


def test_a_folder_in_an_outputs_place_fails_instead_of_counting_as_done(tmp_path):
    touch(tmp_path / "in" / "x.png")
    (tmp_path / "out" / "x.png").mkdir(parents=True)
    opts = convert_mod.ConvertOptions.from_args(_args(tmp_path))
    jobs, tally, failures = _plan(opts)
    assert jobs == [] and tally.skipped == 0
    assert [(name, code) for name, code, _ in failures] == [("x.png", "WRITE_ERROR")]
    assert "not a file" in failures[0][2]


def test_collisions_are_worded_by_their_case(tmp_path):
    touch(tmp_path / "in" / "x.png")
    touch(tmp_path / "in" / "x.jpg")
    touch(tmp_path / "in2" / "x.png")
    opts = convert_mod.ConvertOptions.from_args(
        _args(tmp_path, inputs=[str(tmp_path / "in"), str(tmp_path / "in2")])
    )
    _, _, failures = _plan(opts)
    assert [code for _, code, _ in failures] == ["OUTPUT_COLLISION"] * 2
    same, other = failures  # in/x.* second of the pair; then in2/x.png against in/x.*
    assert "same folder" in same[2] and "different extension" in same[2]
    assert "different folder" in other[2] and "different extension" not in other[2]


def test_dead_symlinks_are_counted_as_unreadable_not_dropped(tmp_path):
    touch(tmp_path / "in" / "ok.png")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "in" / "broken.png")
    os.symlink(tmp_path / "in" / "loop.png", tmp_path / "in" / "loop.png")
    os.symlink(tmp_path / "nowhere.txt", tmp_path / "in" / "notes.txt")  # not an image name
    items = list(walk([str(tmp_path / "in")], WalkOptions(output=str(tmp_path / "out"))))
    got = {os.path.basename(v.path if k == "unreadable" else getattr(v, "src", v)): (k, v) for k, v in items}
    assert {name: kind for name, (kind, _) in got.items()} == {
        "ok.png": "job",
        "broken.png": "unreadable",
        "loop.png": "unreadable",
        "notes.txt": "ignored",
    }
    assert got["broken.png"][1].reason == "broken symbolic link"
    assert got["loop.png"][1].reason == "symbolic link loop"
    # Named on the command line, the same links say so, not "input not found".
    for name, words in (("broken.png", "broken symbolic link"), ("loop.png", "symbolic link loop")):
        with pytest.raises(convert_mod.UsageError, match=words):
            convert_mod.ConvertOptions.from_args(_args(tmp_path, inputs=[str(tmp_path / "in" / name)]))


def test_an_unlistable_folder_is_reported_with_its_path_and_reason_apart(tmp_path, monkeypatch):
    touch(tmp_path / "in" / "locked" / "x.png")
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    opts = convert_mod.ConvertOptions.from_args(_args(tmp_path))
    tally = convert_mod.Tally(opts.walk.output, progress=False)  # writes the report
    assert list(convert_mod.plan(opts, tally)) == []
    tally.close()
    rows = [json.loads(line) for line in open(tally.report_path)]
    assert rows == [
        {
            "input": str(tmp_path / "in" / "locked"),
            "output": None,
            "code": "UNREADABLE",
            "message": "cannot list this folder: Permission denied",
        }
    ]


def test_tile_values_out_of_the_requests_range_are_usage_errors(tmp_path):
    touch(tmp_path / "in" / "x.png")
    for flags in ({"tile": 2**32}, {"tile_overlap": 2**32}, {"tile": -1}):
        with pytest.raises(convert_mod.UsageError, match="within 0..4294967295"):
            convert_mod.ConvertOptions.from_args(_args(tmp_path, **flags))
    assert convert_mod.ConvertOptions.from_args(_args(tmp_path, tile=2**32 - 1)).tile == 2**32 - 1


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
