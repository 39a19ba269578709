"""Typed settings: plain data (YAML, JSON, environment variables, ``--set`` flags) -> frozen dataclasses.

The one coercion engine behind every pixforge config: the server's (``service/config.py``), the
training experiment's (``training/config.py``) and the model registry's generator/discriminator
configs (``training/registry.py``, rebuilt from checkpoints). A config is a frozen dataclass whose
field annotations are the schema; :func:`build` turns a mapping into an instance, converting each
value to its field's type, and every failure is a :class:`~pixforge.errors.SettingsError` whose
message starts with the dotted key at fault.

Rules, the same for every config:

* **Booleans**: ``true``/``false`` (YAML or JSON booleans), or the words ``true``/``false``,
  ``yes``/``no``, ``on``/``off``, ``1``/``0`` in any letter case (environment variables are text,
  and YAML 1.1 already reads ``yes``/``on`` as true). Anything else, the empty string and other
  numbers included, is an error.
* **Integers**: an int, a float with no fraction (``8.0``) or the text of an int (``"8"``); never a
  boolean.
* **Floats**: any finite int/float or its text (``"1e-4"``); never a boolean, NaN or infinity.
* **Strings**: text as is; ``null`` reads as ``""``; an int/float is turned into its text (a YAML
  token ``12345``); booleans, lists and mappings are errors.
* **Tuples / lists**: a list, or comma-separated text (``"cuda,cpu"``); each item by the item type.
* **Mappings**: a mapping, or ``"name=value,..."`` text; keys and values by their types.
* ``X | None``: ``null`` is None, anything else is converted to X. ``Literal[...]``: one of its values.
* **Nested dataclasses**: a mapping, built recursively (keys ``section.key``).
* **Unknown keys** are errors that suggest the closest valid key (``did you mean 'lr_g'?``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pixforge.errors import PixforgeError, SettingsError

T = TypeVar("T")

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
BOOL_HINT = "true or false (or yes/no, on/off, 1/0)"

ErrorFactory = Callable[[str, str], SettingsError]


class _Bad(PixforgeError, ValueError):
    """A value does not fit its type; :func:`coerce` turns it into a SettingsError with the key."""


def parse_bool(value: Any) -> bool:
    """A boolean setting by the one rule above.

    Raises:
        ValueError: not a boolean or one of the accepted words.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
    raise _Bad(f"must be {BOOL_HINT}; got {value!r}")


def suggest(name: object, valid: Iterable[str]) -> str:
    """``" (did you mean 'closest'?)"`` for a misspelt key, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_key(name: object, valid: Iterable[str], what: str = "key") -> str:
    """The reason text for an unknown key: the suggestion, then every valid key."""
    valid = list(valid)
    return f"unknown {what}{suggest(name, valid)}; valid keys: {', '.join(sorted(valid))}"


def field_hints(cls: type) -> dict[str, Any]:
    """Resolved type annotations of a dataclass's init fields (string annotations evaluated)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def join_key(section: str, name: object) -> str:
    """``section.name`` (or just ``name`` at the top level)."""
    return f"{section}.{name}" if section else str(name)


def coerce(
    value: Any,
    hint: Any,
    key: str = "",
    *,
    choices: Mapping[str, Sequence[Any]] | None = None,
    error: ErrorFactory = SettingsError,
) -> Any:
    """Convert one value to the type `hint` by the rules in the module docstring.

    Args:
        value: the raw value (YAML/JSON data or text).
        hint: a type annotation (``int``, ``tuple[str, ...]``, ``Mapping[str, int]``, a dataclass...).
        key: the dotted key, for messages (and for nested dataclasses' keys).
        choices: dotted key -> allowed values, checked inside nested dataclasses (see :func:`build`).
        error: the SettingsError subclass to raise, called as ``error(key, reason)``.

    Raises:
        SettingsError (or `error`): the value does not fit; the message starts with `key`.
    """
    try:
        return _convert(value, hint, key, choices, error)
    except _Bad as exc:
        raise error(key, str(exc)) from None


def build(
    cls: type[T],
    data: Mapping[str, Any],
    *,
    section: str = "",
    choices: Mapping[str, Sequence[Any]] | None = None,
    error: ErrorFactory = SettingsError,
) -> T:
    """Instantiate dataclass `cls` from `data`, converting each value to its field's type.

    Keys left out keep their defaults; unknown keys and missing required fields are errors. A
    ``ValueError`` raised by the dataclass itself (``__post_init__`` checks) becomes `error`, keyed
    by the field its message starts with when there is one.

    Args:
        cls: a dataclass (frozen ones included).
        data: ``{field name: raw value}``.
        section: dotted prefix of the keys in messages (``"train"`` -> ``train.lr_g``).
        choices: dotted key -> allowed values, checked after conversion
            (message ``must be one of a, b; got 'c'``).
        error: the SettingsError subclass to raise, called as ``error(key, reason)``.

    Raises:
        SettingsError (or `error`): the message starts with the dotted key at fault.
    """
    if not isinstance(data, Mapping):
        raise error(section or cls.__name__, f"must be a mapping of keys; got {data!r}")
    hints = field_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, raw in data.items():
        key = join_key(section, name)
        if name not in hints:
            raise error(key, unknown_key(name, hints))
        kwargs[name] = coerce(raw, hints[name], key, choices=choices, error=error)
        check_choice(key, kwargs[name], choices, error)
    missing = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.init
        and f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise error(join_key(section, missing[0]), "is required")
    try:
        return cls(**kwargs)
    except SettingsError:
        raise
    except ValueError as exc:  # the dataclass's own checks (e.g. the registry's __post_init__)
        message = str(exc)
        token = message.replace("=", " ").split(" ", 1)[0]
        key = join_key(section, token) if token in hints else (section or cls.__name__)
        raise error(key, message) from None


def check_choice(
    key: str,
    value: Any,
    choices: Mapping[str, Sequence[Any]] | None,
    error: ErrorFactory = SettingsError,
) -> None:
    """Raise `error` when `key` has a closed vocabulary in `choices` and `value` is not in it."""
    allowed = (choices or {}).get(key)
    if allowed is not None and value not in allowed:
        raise error(key, f"must be one of {', '.join(map(str, allowed))}; got {value!r}")


# ----------------------------------------------------------------------------- conversions


def _convert(value: Any, hint: Any, key: str, choices, error: ErrorFactory) -> Any:
    if hint is Any or hint is object:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _union(value, args, key, choices, error)
    if origin is typing.Literal:
        return _literal(value, args)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise _Bad(f"must be a mapping of keys; got {value!r}")
        return build(hint, value, section=key, choices=choices, error=error)
    if hint is bool:
        return parse_bool(value)
    if hint is int:
        return _int(value)
    if hint is float:
        return _float(value)
    if hint is str:
        return _str(value)
    if origin in (tuple, list, set, frozenset) or hint in (tuple, list):
        return _sequence(value, hint, origin or hint, args, key, choices, error)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return _mapping(value, args, key, choices, error)
    return value  # a type this engine does not know: passed through for the dataclass to check


def _union(value: Any, args: tuple, key: str, choices, error: ErrorFactory) -> Any:
    options = [a for a in args if a is not type(None)]
    if value is None and len(options) < len(args):
        return None
    problems = []
    for option in options:
        try:
            return _convert(value, option, key, choices, error)
        except _Bad as exc:
            problems.append(str(exc))
    raise _Bad(" or ".join(dict.fromkeys(problems)))


def _literal(value: Any, allowed: tuple) -> Any:
    for option in allowed:
        try:
            converted = _convert(value, type(option), "", None, SettingsError)
        except _Bad:
            continue
        if converted == option:
            return option
    raise _Bad(f"must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Bad(f"must be an integer; got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _Bad(f"must be an integer; got {value!r}")


def _float(value: Any) -> float:
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise _Bad(f"must be a finite number; got {value!r}")
    return number


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _Bad(f"must be a string; got {value!r}")


def _sequence(value: Any, hint: Any, origin: Any, args: tuple, key: str, choices, error) -> Any:
    if isinstance(value, str):
        value = [part for part in (p.strip() for p in value.split(",")) if part]
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise _Bad(f"must be a list; got {value!r}")
    items = list(value)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(items) != len(args):
            raise _Bad(f"must be a list of {len(args)} values; got {value!r}")
        return tuple(_convert(v, a, key, choices, error) for v, a in zip(items, args, strict=True))
    item_hint = args[0] if args else Any
    converted = [_convert(v, item_hint, key, choices, error) for v in items]
    return converted if origin is list else origin(converted)


def _mapping(value: Any, args: tuple, key: str, choices, error: ErrorFactory) -> dict:
    if isinstance(value, str):
        pairs = [p.strip() for p in value.split(",") if p.strip()]
        if any("=" not in p for p in pairs):
            raise _Bad(f"must be name=value pairs separated by commas; got {value!r}")
        value = dict(p.split("=", 1) for p in pairs)
    if not isinstance(value, Mapping):
        raise _Bad(f"must be a mapping of name: value; got {value!r}")
    key_hint, value_hint = args if len(args) == 2 else (Any, Any)
    return {
        _convert(k.strip() if isinstance(k, str) else k, key_hint, key, choices, error): _convert(
            v, value_hint, key, choices, error
        )
        for k, v in value.items()
    }
