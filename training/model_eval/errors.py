"""The one error type of `pixforge eval`: bad input the user can fix (printed, exit code 2)."""

from __future__ import annotations

from pixforge.errors import PixforgeError


class EvalError(PixforgeError):
    """The evaluation cannot run: unknown model, empty or wrongly laid out data folder, bad flag."""
