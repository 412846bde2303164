"""Typed option groups: how a family's options are written, checked and stored.

A family takes a few frozen dataclasses instead of thirty keywords (as litgpt's ``Config``):
``network`` (sizes of what is built), ``objective`` (what is minimised), ``optimization`` (one
:class:`~mmgen_lightning.models.optim.Optimization` for every family) and ``sampling`` (the
defaults of the sampling knobs). LightningCLI reads each group as a nested YAML block::

    model:
      class_path: mmgen_lightning.models.FlowMatching
      init_args:
        network: {width: 96, depth: 4}
        optimization: {lr: 3.0e-3, warmup_steps: 50}

and fills in the defaults of what a recipe leaves out. Each group checks its own values when it is
built (:meth:`ConfigGroup.check`), so a bad value is one error naming ``section.field``, raised
before any network exists. Checkpoints store a group as a plain ``dict`` (:meth:`ConfigGroup.to_dict`),
so ``torch.load(weights_only=True)`` needs no class of ours, and :meth:`ConfigGroup.build` turns it
back into the group.

This module imports nothing heavy (no torch).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

Group = TypeVar("Group", bound="ConfigGroup")


@dataclasses.dataclass(frozen=True)
class ConfigGroup:
    """Base of every option group: a frozen dataclass that checks itself when built.

    Subclasses set ``section`` (the ``__init__`` argument and YAML block it is given as, used in
    messages) and override :meth:`check`, calling :meth:`require` for each rule.
    """

    section: ClassVar[str] = "options"

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):  # YAML and checkpoints give lists where a tuple is declared
            value = getattr(self, item.name)
            if isinstance(value, list) and "tuple" in str(item.type):
                object.__setattr__(self, item.name, tuple(value))
        self.check()

    def check(self) -> None:
        """Raise a ``ValueError`` naming the field for every value out of its range."""

    def require(self, ok: bool, field: str, rule: str) -> None:
        """``ValueError("<section>.<field> <rule>, got <value>")`` unless ``ok``."""
        if not ok:
            raise ValueError(f"{self.section}.{field} {rule}, got {getattr(self, field)!r}")

    def require_choice(self, field: str, allowed: Iterable[Any]) -> None:
        """The field's value is one of ``allowed`` (``None`` counts as a value when listed)."""
        allowed = tuple(allowed)
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        self.require(getattr(self, field) in allowed, field, f"must be one of {shown}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [item.name for item in dataclasses.fields(cls)]

    @classmethod
    def build(cls: type[Group], value: "Group | Mapping[str, Any] | None", default: Group | None = None) -> Group:
        """The group from itself, from a mapping (YAML, a checkpoint's ``dict``) laid over ``default`` (the
        class's own defaults when ``None``), or ``None`` (``default``); an unknown key is an error that
        names it and the allowed ones."""
        if isinstance(value, cls):
            return value
        if value is None:
            return default if default is not None else cls()
        if dataclasses.is_dataclass(value):  # a group of another class given for this section
            raise ValueError(f"{cls.section}: expected {cls.__name__}, got {type(value).__name__}")
        if not isinstance(value, Mapping):
            raise ValueError(f"{cls.section}: expected a mapping of {cls.__name__} options, got {value!r}")
        unknown = sorted(set(value) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{cls.section}: unknown option(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(cls.field_names())}")
        return default.replace(**value) if default is not None else cls(**value)

    def to_dict(self) -> dict[str, Any]:
        """The plain ``dict`` a checkpoint and ``hparams.yaml`` hold (tuples stay tuples)."""
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}

    def replace(self: Group, **changes: Any) -> Group:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)


def build_groups(function: Any, **given: Any) -> dict[str, Any]:
    """Each option group ``function`` (a family's ``__init__``) takes, built from what was ``given``: a group
    as it is, a mapping laid over the signature's default (``optimization={"lr": 3e-3}`` keeps a family's
    own betas), ``None`` for an optional group left out."""
    hints = typing.get_type_hints(function)
    signature = inspect.signature(function).parameters
    built = {}
    for name, value in given.items():
        default = signature[name].default
        kinds = [k for k in (hints[name], *typing.get_args(hints[name]))
                 if isinstance(k, type) and issubclass(k, ConfigGroup)]
        if not kinds:
            raise TypeError(f"{name} is not an option group of {function.__qualname__}")
        optional = default is None
        built[name] = None if (optional and value is None) else kinds[0].build(value, None if optional else default)
    return built


def plain(value: Any) -> Any:
    """``value`` with every :class:`ConfigGroup` inside it turned into its ``dict`` (for hparams)."""
    if isinstance(value, ConfigGroup):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    return value
