"""Typed stage configs: params.yaml is the one source of every value.

A stage's section of params.yaml is read into a frozen dataclass whose fields have no defaults, so
a value missing from params.yaml is an error, not a silent fallback that disagrees with the file,
and a key the stage does not know (a typo, a renamed param) is an error too. Every value is
checked against its field's type (pydantic, strict: `"three hundred"` is not an int, `0` is not a
bool), and the error names the key, the type and the value: all at start-up, before any output. A
`Literal[...]` field (a sampler, tasks/config/samples.py) takes one of its names, and the error
lists them. Nested sections (`training:`, `model:`) are dataclasses of their own or plain `dict`
fields when they are passed through to a library as keyword arguments.

    @dataclass(frozen=True)
    class EncodeLatentsConfig(StageConfig):
        resolution: int | None   # image size fed to the VAE (comments live in params.yaml)
        flip: bool

    cfg = EncodeLatentsConfig.from_params(stage_params("encode_latents"), "encode_latents")
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, TypeVar

T = TypeVar("T", bound="StageConfig")


class ConfigError(ValueError):
    """A params section that does not match its stage's config: unknown, missing or mistyped keys."""


class StageConfig:
    """Mixin for frozen dataclasses built from a params.yaml section."""

    @classmethod
    def from_params(cls: type[T], params: dict[str, Any] | None, where: str | None = None) -> T:
        where = where or cls.__name__
        if not isinstance(params, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(params).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
        missing = sorted(n for n, f in fields.items() if n not in params and _required(f))
        if missing:
            raise ConfigError(f"{where}: missing key(s) {missing} (params.yaml must set every value)")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in params.items():
            sub = _config_type(hints[name])
            if sub is not None and value is not None:
                values[name] = sub.from_params(value, f"{where}.{name}")
            else:
                values[name] = _checked(value, hints[name], f"{where}.{name}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _checked(value: Any, hint: Any, where: str) -> Any:
    """`value` itself (not a converted copy: what the manifests record stays as written), if it has
    the type `hint` says."""
    from pydantic import ValidationError  # here, not at import: spawned pool workers import configs

    if typing.get_origin(hint) is typing.Literal:  # a closed set of names: say which ones
        allowed = typing.get_args(hint)
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise ConfigError(f"{where} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    try:
        _adapter(hint).validate_python(value, strict=True)
    except ValidationError:
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})") from None
    return value


@functools.cache
def _adapter(hint: Any):
    from pydantic import TypeAdapter

    return TypeAdapter(hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint).replace("typing.", "")


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _config_type(hint: Any) -> type[StageConfig] | None:
    """The StageConfig class a field holds (also inside `X | None`), else None."""
    candidates = typing.get_args(hint) or (hint,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, StageConfig):
            return c
    return None
