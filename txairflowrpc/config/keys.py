"""
How a config table is read: `Key` says what one key may hold, `read_table`
checks a table against its keys (unknown and missing keys, types, extra
checks, readable files), and every problem is a `ConfigError` naming the
dotted key at fault.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import attrs


@attrs.define(auto_exc=True, str=False)
class ConfigError(Exception):
    """The config cannot be used; ``key`` is the dotted key at fault."""

    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}" if self.key else self.problem


def port(value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535")


def positive(value: float) -> None:
    if value <= 0:
        raise ValueError("must be greater than 0")


def strings(value: list[Any]) -> None:
    if not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be an array of non-empty strings")


def at_least(n: int) -> Callable[[int], None]:
    def check(value: int) -> None:
        if value < n:
            raise ValueError(f"must be at least {n}")

    return check


def between(low: int, high: int) -> Callable[[int], None]:
    def check(value: int) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high}")

    return check


_REQUIRED = object()


@attrs.frozen
class Key:
    """How one key is read: its TOML type, default, and an extra check."""

    type: type
    default: Any = _REQUIRED
    check: Callable[[Any], None] | None = None
    is_path: bool = False
    #: For paths: must the file exist (and be readable) at start?
    must_exist: bool = True


_TOML_TYPE_NAMES = {
    str: "a string", int: "an integer", float: "a number", bool: "true or false",
    list: "an array", dict: "a table",
}


def read_table(
    name: str, table: object, base: Path, keys: dict[str, Key]
) -> dict[str, Any]:
    """
    Check one TOML table against its keys: unknown and missing keys, types,
    checks, readable paths.  ``name`` is its dotted name for messages.
    """
    if not isinstance(table, dict):
        raise ConfigError(name, "must be a table ([%s])" % name)
    for key in table:
        if key not in keys:
            raise ConfigError(f"{name}.{key}", "unknown key")
    values: dict[str, Any] = {}
    for key, spec in keys.items():
        dotted = f"{name}.{key}"
        if key not in table:
            if spec.default is _REQUIRED:
                raise ConfigError(dotted, "missing (required)")
            values[key] = spec.default
            continue
        value = table[key]
        if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # TOML integers have no bound; a float has
                raise ConfigError(dotted, "must be a finite number") from None
        if not isinstance(value, spec.type) or (
            spec.type is int and isinstance(value, bool)
        ):
            raise ConfigError(dotted, f"must be {_TOML_TYPE_NAMES[spec.type]}")
        if spec.type is float and not math.isfinite(value):
            # TOML has nan and inf; every check passes nan, and no setting means either.
            raise ConfigError(dotted, "must be a finite number")
        if spec.check is not None:
            try:
                spec.check(value)
            except ValueError as e:
                raise ConfigError(dotted, str(e)) from None
        if spec.is_path:
            value = _readable(dotted, base / value) if spec.must_exist else base / value
        values[key] = value
    return values


def _readable(key: str, path: Path) -> Path:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
    return path
