"""Stage configs as frozen dataclasses with a flat-dict round trip.

Every stage (data, preprocessing, model, loss, train, search, serve) has one frozen
dataclass. `to_flat_dict()` turns it into ``{"field": value}`` with scalar values only,
so that every field can be an MLflow param and a Ray Tune key; `from_flat_dict()` goes
back and refuses unknown keys, because a typo in a search space must fail loudly instead
of silently searching nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import typing
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T", bound="FlatConfig")

Scalar = str | int | float | bool | None


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the key."""


def _encode(value: Any) -> Scalar:
    """Tuples and lists become JSON strings so that MLflow and Tune see scalars."""
    if isinstance(value, (tuple, list)):
        return json.dumps(list(value))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _decode(value: Any, annotation: Any, key: str) -> Any:
    """Coerce a flat value back to the field's declared type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if value is None:
        return None
    if origin in (tuple, list) or annotation in (tuple, list):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{key}: expected a JSON list, got {value!r}") from exc
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if args and args[-1] is not Ellipsis and len(args) == len(value):
            return tuple(_decode(v, a, key) for v, a in zip(value, args, strict=True))
        inner = args[0] if args else None
        return tuple(_decode(v, inner, key) if inner else v for v in value)
    if origin is dict or annotation is dict:
        return json.loads(value) if isinstance(value, str) else dict(value)
    if args and type(None) in args:  # Optional[X] / X | None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _decode(value, non_none[0], key)
        return value
    if annotation is bool:
        if isinstance(value, str):
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ConfigError(f"{key}: expected a boolean, got {value!r}")
        return bool(value)
    if annotation is int:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if annotation is float:
        return float(value)
    if annotation is str:
        return str(value)
    return value


@dataclasses.dataclass(frozen=True)
class FlatConfig:
    """Mixin for stage configs: flat dict round trip, validated replace.

    Subclasses are frozen dataclasses whose fields are scalars, tuples of scalars or
    nested `FlatConfig`s (flattened with a ``"<field>."`` prefix).
    """

    def to_flat_dict(self, prefix: str = "") -> dict[str, Scalar]:
        """``{"field": scalar}``; nested configs as ``"outer.inner"`` keys."""
        out: dict[str, Scalar] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            key = f"{prefix}{field.name}"
            if isinstance(value, FlatConfig):
                out.update(value.to_flat_dict(prefix=f"{key}."))
            else:
                out[key] = _encode(value)
        return out

    @classmethod
    def from_flat_dict(cls: type[T], flat: dict[str, Any], strict: bool = True) -> T:
        """Rebuild from `to_flat_dict` output; unknown keys raise `ConfigError`.

        Missing keys keep their defaults, so a search space only names what it varies.
        """
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in flat.items():
            head, _, rest = key.partition(".")
            if head not in fields:
                if strict:
                    known = ", ".join(sorted(fields))
                    raise ConfigError(f"unknown key {key!r} for {cls.__name__}; known: {known}")
                continue
            if rest:
                nested.setdefault(head, {})[rest] = value
            else:
                kwargs[head] = _decode(value, hints[head], key)
        for head, sub in nested.items():
            sub_cls = hints[head]
            if not (isinstance(sub_cls, type) and issubclass(sub_cls, FlatConfig)):
                raise ConfigError(f"{head!r} is not a nested config in {cls.__name__}")
            kwargs[head] = sub_cls.from_flat_dict(sub, strict=strict)
        return cls(**kwargs)

    def replace(self: T, **changes: Any) -> T:
        """A copy with `changes` applied; unknown names raise `ConfigError`."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown} for {type(self).__name__}")
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_flat_dict(), sort_keys=True)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_flat_dict(json.loads(text))
