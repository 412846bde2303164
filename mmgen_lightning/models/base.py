"""What every family shares: the ``generate`` contract, declared modalities, checkpoint extras.

A checkpoint written by any family is self-contained: Lightning stores the hyper-parameters
(``data_spec`` included, so every size is known) and the weights; :class:`GenerativeModule` adds
the family's import path and the tokenizer, so :func:`load_generator` rebuilds the model with no
dataset and no config file, and loads with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import lightning as L
import torch
from torch import Tensor

from mmgen_lightning.batch import MODALITIES, check_batch, check_modalities
from mmgen_lightning.config import ConfigGroup, plain
from mmgen_lightning.errors import CheckpointError
from mmgen_lightning.knobs import Knob, check_sampling
from mmgen_lightning.modalities import DataSpec
from mmgen_lightning.modalities import scored_dimensions as _scored_dimensions
from mmgen_lightning.tokenizer import CaptionTokenizer

CHECKPOINT_KEY = "mmgen"
#: the layout of a checkpoint's hyper-parameters: 2 = the option groups; absent = the flat keywords before them
CHECKPOINT_FORMAT = 2


class Likelihood(NamedTuple):
    """What :meth:`GenerativeModule.log_likelihood` returns for one batch.

    ``log_prob``: ``B`` float64, ``log p(outputs | conditions)`` in nats per sample, or a lower bound
    of it (``name`` says which: ``iwae_8``, ``exact``, ``ode``); ``dims``: ``B`` float64, the number of
    scalars it scores (pixels, log-mel bins, real tokens, 1 for a label), so bits/dim follow.
    """

    name: str
    log_prob: Tensor
    dims: Tensor


@dataclasses.dataclass(frozen=True)
class LegacyLayout:
    """How a checkpoint of the flat-keyword layout (before the option groups) maps onto a family's options.

    Args:
        groups: section -> group class; a flat key moves into the group that has a field of its name.
        renamed: flat key -> its new place, ``"section.field"`` or a top-level argument.
        dropped: options that are gone -> the value that meant "off"; a checkpoint trained with another
            value cannot be rebuilt faithfully, and says so.
        state_keys: old ``state_dict`` prefix -> new prefix.
        adjust: the flat hyper-parameters -> the same, for what the tables cannot say (an option whose
            meaning moved, such as a ``space`` switch that became an optional block).
        adjust_state: ``(state_dict, upgraded hyper-parameters) -> state_dict``, after the renames.
    """

    groups: dict[str, type[ConfigGroup]]
    renamed: dict[str, str] = dataclasses.field(default_factory=dict)
    dropped: dict[str, Any] = dataclasses.field(default_factory=dict)
    state_keys: dict[str, str] = dataclasses.field(default_factory=dict)
    adjust: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    adjust_state: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None

    def hyperparameters(self, family: type, flat: Mapping[str, Any]) -> dict[str, Any]:
        """The flat hyper-parameters of an old checkpoint as this family's ``__init__`` arguments."""
        if self.adjust is not None:
            flat = self.adjust(dict(flat))
        top = set(inspect.signature(family.__init__).parameters) - {"self"}
        owner = {name: section for section, group in self.groups.items() for name in group.field_names()}
        nested: dict[str, Any] = {section: {} for section in self.groups}
        for key, value in flat.items():
            place = self.renamed.get(key, key)
            if key in self.dropped:
                if value is not None and value != self.dropped[key]:
                    raise CheckpointError(f"this checkpoint was trained with {key}={value!r}, an option this version "
                                          "no longer has", hint="load it with mmgen-lightning 0.1 (the flat options)")
            elif "." in place:
                section, name = place.split(".", 1)
                nested.setdefault(section, {})[name] = value
            elif place in top and place not in self.groups:
                nested[place] = value
            elif place in owner:
                nested[owner[place]][place] = value
            else:
                raise CheckpointError(f"unknown option {key!r} in an old {family.__name__} checkpoint")
        return {key: value for key, value in nested.items() if value != {}}

    def state_dict(self, state: Mapping[str, Any], hparams: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` with the old prefixes renamed (``hparams``: the upgraded hyper-parameters)."""
        renamed = {}
        for key, value in state.items():
            for old, new in self.state_keys.items():
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
            renamed[key] = value
        return renamed if self.adjust_state is None else self.adjust_state(renamed, hparams)


def scored_dimensions(batch: Mapping[str, Tensor], modalities: Sequence[str], audio_dims: int | None = None) -> Tensor:
    """Scalars per sample a likelihood of ``modalities`` scores: ``B`` float64; each modality counts its
    own (``Modality.scored_dimensions``), audio ``audio_dims`` when it is scored as a spectrogram."""
    return _scored_dimensions(batch, modalities, spectrogram_dims=audio_dims)


class GenerativeModule(L.LightningModule):
    """Base of every family.

    Args:
        data_spec: sizes that belong to the data (vocab size, image size, sample rate, ...),
            linked from the datamodule's ``data_spec`` by the CLI; never written by hand. Held as a
            typed :class:`~mmgen_lightning.modalities.DataSpec` (``self.data_spec.image_size``).
    """

    #: modalities ``generate`` accepts as conditions / produces; families set them per instance.
    condition_modalities: tuple[str, ...] = ()
    output_modalities: tuple[str, ...] = ()
    #: the keyword arguments of :meth:`sample` with their types and ranges (``knobs.Knob``); when empty they
    #: are read from ``sample``'s signature with the shared meanings of ``knobs.KNOWN_KNOBS``
    sampling_knobs: dict[str, Knob] = {}
    #: how checkpoints of the flat-keyword layout map onto this family's option groups (None: nothing to map)
    legacy: ClassVar[LegacyLayout | None] = None
    #: parameter names (substrings) the optimiser never decays, beside biases and norms
    no_decay: ClassVar[tuple[str, ...]] = ()

    def __init__(self, data_spec: dict[str, Any] | None = None) -> None:
        super().__init__()
        # typed, and a Mapping, so spec("...") and .get() keep working; hparams keep the plain dict
        self.data_spec = DataSpec.from_dict(data_spec)
        self.tokenizer: CaptionTokenizer | None = None

    def save_hyperparameters(self, *args: Any, ignore: Sequence[str] | str | None = None, frame: Any = None,
                             logger: bool = True) -> None:
        """Lightning's, with each option group stored as its plain ``dict`` (checkpoints load with
        ``weights_only=True`` and ``hparams.yaml`` stays readable); ``__init__`` turns it back into the group."""
        super().save_hyperparameters(*args, ignore=ignore, frame=frame or inspect.currentframe().f_back, logger=logger)
        for store in (self._hparams, self._hparams_initial):
            for key in list(store):
                store[key] = plain(store[key])

    def configure_optimizers(self) -> Any:
        """The one optimiser path (``models/optim.py``) from the family's ``config.optimization``."""
        from mmgen_lightning.models.optim import configure_optimization

        return configure_optimization(self, self.config.optimization, no_decay=self.no_decay)

    def caption_strings(self, ids: Tensor) -> list[str]:
        """The captions behind token ids (``long B,L``), for a pretrained text encoder with its own tokenizer
        (``network.text_encoder_path``): decoded by the datamodule's tokenizer this model carries."""
        if self.tokenizer is None:
            raise ValueError("network.text_encoder_path needs the datamodule's tokenizer to turn token ids back "
                             "into captions (model.tokenizer = datamodule.tokenizer, as `mmgen fit` does)")
        return self.tokenizer.decode(ids.cpu())

    def spec(self, key: str) -> Any:
        """A size from ``data_spec``, with an error that says where it should have come from."""
        if key not in self.data_spec:
            raise ValueError(f"{type(self).__name__}: data_spec has no {key!r} (it is linked from the "
                             f"datamodule's data_spec; keys present: {sorted(self.data_spec)})")
        return self.data_spec[key]

    # --- directions ---------------------------------------------------------------------------
    def declare_direction(self, condition: str | None, output: str) -> None:
        """For families with one condition (or none) and one output: check that the data carries both and
        declare them as ``self.condition``/``self.output`` and the served modalities."""
        available = self.data_spec.get("modalities")
        for role, name in (("condition", condition), ("output", output)):
            if name is not None and available is not None and name not in available:
                raise ValueError(f"{role}: {name!r} is not carried by the data; the datamodule's modalities are "
                                 f"{', '.join(available)}")
        self.condition, self.output = condition, output
        self.condition_modalities = (condition,) if condition else ()
        self.output_modalities = (output,)

    def serves(self, sources: tuple[str, ...], target: str) -> bool:
        """Whether ``sources -> target`` is modelled; families with stricter rules override this."""
        return set(sources) <= set(self.condition_modalities) and target in self.output_modalities

    def directions(self) -> list[str]:
        """Human-readable directions, for error messages and dashboards."""
        sources = "|".join(self.condition_modalities) or ""
        return [f"{sources}->{target}" for target in self.output_modalities]

    def check_direction(self, conditions: Mapping[str, Tensor], to: str | Sequence[str] | None) -> list[str]:
        sources = tuple(k for k in conditions if k in MODALITIES)
        if to is None:
            to = [m for m in self.output_modalities if m not in sources][:1] or list(self.output_modalities[:1])
        targets = check_modalities(to, "to")
        for target in targets:
            if not self.serves(sources, target):
                given = "+".join(sources) or "(nothing)"
                raise ValueError(f"{type(self).__name__} cannot generate {given}->{target}; "
                                 f"it serves: {', '.join(self.directions())}")
        return targets

    # --- the generate contract ----------------------------------------------------------------
    @torch.no_grad()
    def generate(self, conditions: Mapping[str, Tensor] | None, num_samples: int,
                 to: str | Sequence[str] | None = None, **sampling: Any) -> dict[str, Tensor]:
        """Sample ``num_samples`` outputs given ``conditions`` (batch-contract keys, batch size 1
        or ``num_samples``); returns batch-contract keys for every modality in ``to``.

        Sampling knobs (temperature, top_k, top_p, guidance_scale, truncation, ...) are keyword
        arguments of the family's :meth:`sample`.
        """
        conditions = dict(conditions or {})
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        check_batch(conditions, where="conditions")
        for key, value in conditions.items():
            if value.shape[0] not in (1, num_samples):
                raise ValueError(f"conditions[{key!r}] has batch size {value.shape[0]}; "
                                 f"give 1 (shared) or num_samples={num_samples}")
            conditions[key] = value.to(self.device).expand(num_samples, *value.shape[1:])
        targets = self.check_direction(conditions, to)
        check_sampling(self, sampling, shared_ranges=False)  # an unknown knob (or declared range), before drawing
        defaults = getattr(getattr(self, "config", None), "sampling", None)
        if defaults is not None:  # the recipe's defaults for every knob not given
            sampling = {**defaults.to_dict(), **{k: v for k, v in sampling.items() if v is not None}}
        was_training = self.training
        self.eval()
        try:
            return self.sample(conditions, num_samples, targets, **sampling)
        finally:
            self.train(was_training)

    def sample(self, conditions: dict[str, Tensor], num_samples: int, targets: list[str],
               **sampling: Any) -> dict[str, Tensor]:
        raise NotImplementedError

    # --- the likelihood contract --------------------------------------------------------------
    #: keyword options :meth:`log_likelihood` takes (``iwae_samples``, ``steps``, ...); metrics pass only these
    likelihood_options: tuple[str, ...] = ()

    def log_likelihood(self, batch: Mapping[str, Tensor], **options: Any) -> Likelihood | None:
        """``log p(outputs | conditions)`` of a batch-contract batch, or ``None`` for a family without a
        likelihood (the default). Families with one override this; ``metrics/likelihood.py`` calls only it."""
        return None

    @property
    def has_likelihood(self) -> bool:
        return type(self).log_likelihood is not GenerativeModule.log_likelihood

    # --- logging ------------------------------------------------------------------------------
    def _logging_step(self) -> bool:
        """Whether this training batch's metrics reach the logger. Lightning writes on-step metrics only
        every ``log_every_n_steps`` batches and drops the rest, and each ``self.log`` costs about a
        millisecond of Python (several percent of a small CPU step), so families make them only then."""
        trainer = self._trainer
        if trainer is None:  # a step run by hand, outside fit: nothing would reach a logger
            return False
        every = trainer.log_every_n_steps
        return bool(trainer.fast_dev_run) or (every > 0 and (trainer.fit_loop.total_batch_idx + 1) % every == 0)

    # --- checkpoint extras --------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.tokenizer is None and getattr(datamodule, "tokenizer", None) is not None:
            self.tokenizer = datamodule.tokenizer

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        cls = type(self)
        checkpoint[CHECKPOINT_KEY] = {
            "class_path": f"{cls.__module__}.{cls.__qualname__}",
            "format": CHECKPOINT_FORMAT,
            "tokenizer": self.tokenizer.to_json() if self.tokenizer is not None else None,
            "max_text_length": self.tokenizer.max_length if self.tokenizer is not None else None,
        }
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:  # lets `mmgen evaluate` rebuild the data with no config file
            kind = type(datamodule)
            checkpoint[CHECKPOINT_KEY]["datamodule"] = {"class_path": f"{kind.__module__}.{kind.__qualname__}",
                                                        "init_args": {k: v for k, v in datamodule.hparams.items()
                                                                      if not k.startswith("_")}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_checkpoint(type(self), checkpoint)  # Lightning loads the state_dict after this hook
        extras = checkpoint.get(CHECKPOINT_KEY) or {}
        if extras.get("tokenizer"):
            self.tokenizer = CaptionTokenizer.from_json(extras["tokenizer"], extras["max_text_length"])


def upgrade_checkpoint(family: type[GenerativeModule], checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Bring a checkpoint of the flat-keyword layout to the option groups, in place (hyper-parameters and
    ``state_dict`` keys, by the family's :class:`LegacyLayout`); a current checkpoint is left as it is."""
    extras = checkpoint.setdefault(CHECKPOINT_KEY, {})
    if extras.get("format", 1) >= CHECKPOINT_FORMAT or family.legacy is None:
        return checkpoint
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    checkpoint["hyper_parameters"] = family.legacy.hyperparameters(family, hparams)
    for key in ("state_dict", "current_model_state"):
        if key in checkpoint:
            checkpoint[key] = family.legacy.state_dict(checkpoint[key], checkpoint["hyper_parameters"])
    extras["format"] = CHECKPOINT_FORMAT
    return checkpoint


def load_generator(path: str | Path, map_location: str | torch.device = "cpu") -> GenerativeModule:
    """Rebuild any family from its checkpoint alone (``weights_only=True``: no arbitrary pickles)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{path}: not a loadable checkpoint with weights_only=True ({error})") from error
    for key in (CHECKPOINT_KEY, "state_dict", "hyper_parameters"):
        if key not in checkpoint:
            raise KeyError(f"{path}: checkpoint has no {key!r} entry; was it written by mmgen-lightning?")
    class_path = checkpoint[CHECKPOINT_KEY].get("class_path", "")
    module_name, _, class_name = class_path.rpartition(".")
    if not module_name.startswith("mmgen_lightning."):
        raise ValueError(f"{path}: refusing to import {class_path!r}; only mmgen_lightning families load")
    cls = getattr(importlib.import_module(module_name), class_name)
    upgrade_checkpoint(cls, checkpoint)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    model = cls(**hparams)
    missing, unexpected = model.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise KeyError(f"{path}: state_dict does not match {class_name}: "
                       f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    model.on_load_checkpoint(checkpoint)
    return model.eval()
