"""Sampling knobs: each family's ``sample`` keyword arguments, with their types and ranges.

A family declares its knobs as ``sampling_knobs: dict[str, Knob]`` on its class (:func:`family_knobs`
picks the shared ones by name); a family that declares none has them read from the keyword arguments
of its ``sample`` method, with the types and ranges of :data:`KNOWN_KNOBS` (the names every family
shares mean the same thing everywhere). One check,
:func:`check_sampling`, runs before any sample is drawn (``GenerativeModule.generate``) and names
the knob, the allowed range, and the family's knobs; ``mmgen generate`` calls it before the first batch.

This module imports nothing heavy (no torch), so the command's ``--help`` can list the knobs.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mmgen_lightning.errors import UsageError

SEED_LIMIT = 2**63  # torch and numpy generators take seeds in [0, 2**63)


class UnknownKnobError(UsageError, TypeError):
    """A keyword ``sample`` does not take: a ``TypeError``, as Python's own, but saying which knobs it takes."""


@dataclass(frozen=True)
class Knob:
    """One sampling keyword argument.

    Args:
        kind: ``int``, ``float`` or ``bool`` (``None``: anything, unchecked, e.g. a tensor of latents).
        low: the smallest value allowed (``None``: unbounded below).
        high: the largest value allowed (``None``: unbounded above).
        low_open: ``low`` itself is not allowed.
        help: what it does, for ``--help``.
    """

    kind: type | None = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    help: str = ""

    def describe(self) -> str:
        if self.kind is None:
            return "any value"
        def number(value: float) -> str:
            return "2**63 - 1" if value == SEED_LIMIT - 1 else f"{value:g}"

        text = self.kind.__name__
        if self.low is not None and self.high is not None:
            text += f" in {'(' if self.low_open else '['}{number(self.low)}, {number(self.high)}]"
        elif self.low is not None:
            text += f" {'>' if self.low_open else '>='} {number(self.low)}"
        elif self.high is not None:
            text += f" <= {number(self.high)}"
        return text

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or ``None`` when it is (``None`` itself is the family's default)."""
        if value is None or self.kind is None:
            return None
        if getattr(value, "shape", ()) != ():
            return None  # a per-sample tensor of values: the family checks it
        if self.kind is bool:
            return None if isinstance(value, bool) or getattr(value, "dtype", None) is not None else \
                "must be true or false"
        try:
            value = float(value)  # numpy and 0-d torch numbers too
        except (TypeError, ValueError):
            return f"must be a number ({self.describe()})"
        if self.kind is int and not float(value).is_integer():
            return f"must be a whole number ({self.describe()})"
        if not math.isfinite(value):
            return f"must be a finite number ({self.describe()})"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and value > self.high
        return f"must be {self.describe()}" if too_low or too_high else None


#: the shared meaning of every knob name a family uses (a family's own declaration wins)
KNOWN_KNOBS: dict[str, Knob] = {
    "temperature": Knob(float, 0, help="softmax temperature of sampled tokens; 0 = most likely token"),
    "top_k": Knob(int, 1, help="keep only the k most likely tokens"),
    "top_p": Knob(float, 0, 1, low_open=True, help="keep the smallest set of tokens of probability mass p"),
    "guidance_scale": Knob(float, 0, help="classifier-free guidance scale (1 = conditional model)"),
    "guidance_start": Knob(float, 0, 1, help="time (0 = noise, 1 = data) from which guidance applies"),
    "guidance_stop": Knob(float, 0, 1, help="time (0 = noise, 1 = data) after which guidance stops"),
    "private_scale": Knob(float, 0, 4, help="scale c of a VAE's cross-modal private-latent draws w ~ N(0, c^2 I) "
                                             "(0 = the prior's mean); default sampling.private_scale"),
    "truncation": Knob(float, 0, help="latent truncation / noise scale (0 = the mode)"),
    "num_beams": Knob(int, 1, help="beam width of beam search (1 = none)"),
    "steps": Knob(int, 1, help="solver / refinement steps"),
    "seed": Knob(int, 0, SEED_LIMIT - 1, help="seeds the sampling noise"),
    "repetition_penalty": Knob(float, 0, low_open=True, help="divides the logits of tokens already written "
                                                              "(> 1 discourages repeats)"),
    "length_penalty": Knob(float, help="beam scores are divided by length ** length_penalty"),
    "no_repeat_ngram_size": Knob(int, 0, help="no n-gram of this size twice (0 = off)"),
    "min_new_tokens": Knob(int, 0, help="the end token is forbidden before this many tokens"),
    "max_new_tokens": Knob(int, 1, help="at most this many tokens after the start token"),
    "griffin_lim_iterations": Knob(int, 1, help="Griffin-Lim iterations turning a spectrogram into a waveform"),
    "use_cache": Knob(bool, help="reuse the keys/values of earlier positions (KV cache)"),
    "interpolate": Knob(bool, help="the samples walk from one latent draw to a second"),
}


def family_knobs(*names: str, **own: Knob) -> dict[str, Knob]:
    """A family's ``sampling_knobs``: the shared :data:`KNOWN_KNOBS` of ``names``, then its ``own`` knobs,
    in that order (the order messages and ``--help`` list them in)."""
    return {**{name: KNOWN_KNOBS[name] for name in names}, **own}

#: ``sample`` parameters that are the generate contract itself, not knobs
_CONTRACT = ("self", "conditions", "num_samples", "targets")


def sampling_knobs(model_or_class: Any) -> dict[str, Knob] | None:
    """The knobs a family takes: its ``sampling_knobs`` declaration, else its ``sample`` method's keyword
    arguments; ``None`` when ``sample`` takes any keyword (``**kwargs``), so names cannot be checked."""
    declared = getattr(model_or_class, "sampling_knobs", None)
    if declared:
        return dict(declared)
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    sample = getattr(cls, "sample", None)
    if sample is None:
        return {}
    knobs = {}
    for name, parameter in inspect.signature(sample).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if name in _CONTRACT or parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        knobs[name] = KNOWN_KNOBS.get(name, Knob(None))
    return knobs


def check_sampling(model_or_class: Any, sampling: Mapping[str, Any], flag_style: bool = False,
                   shared_ranges: bool = True) -> None:
    """Raise :class:`UsageError` for a knob the family does not take or a value out of its range.

    ``flag_style`` names knobs as command-line flags (``--top_k``) instead of keyword arguments. Ranges are
    the family's declared ``sampling_knobs``; with ``shared_ranges`` also :data:`KNOWN_KNOBS`' for knobs it
    does not declare (``mmgen generate`` does; ``generate()`` leaves those to the family's own checks and words).
    """
    family = (model_or_class if isinstance(model_or_class, type) else type(model_or_class)).__name__
    accepted = sampling_knobs(model_or_class)
    for name, value in sampling.items():
        where = f"--{name}" if flag_style else f"{name}={value!r}"
        if accepted is not None and name not in accepted:
            offered = f"{family}'s knobs are: {', '.join(accepted)}" if accepted else f"{family} takes no knobs"
            raise UnknownKnobError(f"unexpected keyword argument {name!r}: {family} has no sampling knob {name!r}",
                                   where, f"drop it; {offered}")
        declared = getattr(model_or_class, "sampling_knobs", None) or {}
        knob = declared.get(name) or (((accepted or {}).get(name) or KNOWN_KNOBS.get(name)) if shared_ranges else None)
        problem = knob.problem(value) if knob is not None else None
        if problem:
            raise UsageError(f"{name} {problem}, got {value!r}", where,
                             f"give {name} as {knob.describe()}" + (f" ({knob.help})" if knob.help else ""))


__all__ = ["KNOWN_KNOBS", "Knob", "SEED_LIMIT", "UnknownKnobError", "check_sampling", "family_knobs",
           "sampling_knobs"]
