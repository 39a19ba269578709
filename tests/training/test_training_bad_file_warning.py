"""A skipped training file is reported as one plain `warning: ...` line on stderr, not in Python's
default warning format (pixforge's source location plus the quoted `tracker.record(...)` line)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

from pixforge.training.data import BadFileWarning


def test_skipped_file_warning_is_one_plain_line(tmp_path):
    # A fresh interpreter: pytest records warnings itself, so only a real process shows what a
    # user sees. The call sits in a file, as the training loop's does, so the default format
    # would quote its source line.
    script = tmp_path / "loop.py"
    script.write_text(
        textwrap.dedent(
            """
            from pixforge.training.data import SkipTracker

            tracker = SkipTracker()
            tracker.record("data/a.png\\t3x3 is smaller than the 32x32 crop")
            tracker.record("data/a.png\\t3x3 is smaller than the 32x32 crop")  # once per file
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "warning: skipping unusable file data/a.png: 3x3 is smaller than the 32x32 crop\n"


def test_other_warnings_keep_the_default_format():
    text = warnings.formatwarning("m", RuntimeWarning, "f.py", 3, "x = 1")
    assert text.startswith("f.py:3: RuntimeWarning: m") and "x = 1" in text
    assert warnings.formatwarning("gone", BadFileWarning, "f.py", 3, "x = 1") == "warning: gone\n"
