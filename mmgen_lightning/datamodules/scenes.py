"""Scenes: one to four Shapes objects on a 64 px canvas, captioned by what they are and where they stand.

Each item draws a caption, then a scene the caption is true of, and renders

* ``image`` ``3,64,64``: the objects, anti-aliased as Shapes draws them (``shapes.render_frames``),
  on black (-1); objects never overlap and lie wholly on the canvas, at uniformly drawn positions;
* ``text``: the caption, of one of four kinds (``KINDS``):

  - single: "a large red circle";
  - relation: "a red circle to the left of a blue square" (also "to the right of", "above",
    "below"): along that axis the first object's centroid lies at least ``RELATION_MARGIN`` of the
    canvas beyond the second's (:func:`relation_holds`);
  - binding: "a red circle and a blue square": both, each in its own colour;
  - counting: "three green triangles", "one red circle": exactly that many of that object.

  A size word ("small" or "large", also "little" or "big") may precede any object; without one the
  object's size is free. An image holds exactly the objects its caption names, nothing else
  (:func:`match_scene` is that test). Wordings vary: "there is ...", "a picture of ...", "left of",
  "over", "under".

Held-out combinations: the six (colour, shape) pairs of ``HELDOUT_PAIRS`` (red triangle, green
diamond, blue circle, yellow square, purple diamond, cyan triangle) are on no object of the train,
val or test splits. Every caption of the ``heldout`` split names at least one of them, in every kind.

Every item is a pure function of ``(seed, split, index)``. The caption kind cycles with the index
(single, relation, binding, counting), so the first ``4 n`` items of a split hold ``n`` of each.

``attributes`` (``long 27``, columns ``ATTRIBUTE_NAMES``, -1 where a column does not apply):
``kind`` (index in ``KINDS``), ``relation`` (index in ``RELATIONS``, -1 unless a relation), ``count``
(objects on the canvas, 1-4), then per object slot ``k`` in 0..3: ``object{k}_present`` (0 or 1),
``object{k}_shape``, ``_color``, ``_size`` (indices in Shapes' ``SHAPES``, ``COLORS``, ``SIZES``) and
``object{k}_x``, ``_y`` (the pixel column and row of its centroid, 0-63). Slots follow the caption
(a relation's first object in slot 0); a counted group goes left to right. The whole scene, with
exact centroids, is ``dataset.scene(index)``.

Captions from users go through :func:`parse_scene_caption`: an unknown colour or shape, a count
above 4, or more objects than the canvas fits raise a one-line ``ValueError`` naming the word. Text
that names no colour, shape, size or count at all is not a scene caption: it raises
:class:`FreeTextCaption` (a ``ValueError``), which a generator that draws free text anyway turns
into a warning (``warnings.warn(str(error))``) and an evaluation reports as the error it is.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmgen_lightning.datamodules.attributes import AttributeReading
from mmgen_lightning.datamodules.base import SPLITS, MultimodalDataModule
# Shapes' geometry, so an object looks the same in both sources
from mmgen_lightning.datamodules.shapes import COLOR_RGB, COLORS, SHAPES, SIZES, _signed_distance
from mmgen_lightning.tokenizer import CaptionTokenizer

IMAGE_SIZE = 64
MAX_OBJECTS = 4
KINDS = ("single", "relation", "binding", "counting")
RELATIONS = ("left of", "right of", "above", "below")
#: the splits of this source: Shapes' three, then the held-out combinations
SCENE_SPLITS = (*SPLITS, "heldout")
#: (colour, shape) index pairs on no object of train/val/test, and on one or more of every heldout caption
HELDOUT_PAIRS = tuple((COLORS.index(color), SHAPES.index(shape)) for color, shape in (
    ("red", "triangle"), ("green", "diamond"), ("blue", "circle"), ("yellow", "square"), ("purple", "diamond"),
    ("cyan", "triangle")))
ALL_PAIRS = tuple(itertools.product(range(len(COLORS)), range(len(SHAPES))))
SEEN_PAIRS = tuple(pair for pair in ALL_PAIRS if pair not in HELDOUT_PAIRS)

ATTRIBUTE_NAMES = ("kind", "relation", "count", *(f"object{k}_{field}" for k in range(MAX_OBJECTS)
                                                  for field in ("present", "shape", "color", "size", "x", "y")))
ATTRIBUTE_SIZES = (len(KINDS), len(RELATIONS), MAX_OBJECTS + 1,
                   *(n for _ in range(MAX_OBJECTS) for n in (2, len(SHAPES), len(COLORS), len(SIZES), IMAGE_SIZE,
                                                             IMAGE_SIZE)))

# --- geometry (canvas units: the canvas is [0, 1] on each side, y down) ---------------------------
#: Shapes' "radius" per size, smaller than Shapes' own so that four large objects fit the canvas
SIZE_RADIUS = (0.065, 0.105)
#: each object's radius varies by up to this fraction either way
RADIUS_JITTER = 0.05
#: radius of the circle around each shape's centroid that holds it, per unit radius, in
#: ``shapes._signed_distance``'s geometry: circle 1, square 0.87 sqrt(2), triangle 2.6 / sqrt(3)
#: (its circumradius: the triangle is centred on its centroid), diamond 1.15
BOUNDING = (1.0, 0.87 * math.sqrt(2.0), 2.6 / math.sqrt(3.0), 1.15)
#: least space between two objects' bounding circles, and between one and the canvas edge
GAP, EDGE = 0.03, 0.02
#: a relation holds when the centroids are at least this far apart along its axis (6.4 px)
RELATION_MARGIN = 0.1
#: the data places related objects a further pixel apart, so a judge's sub-pixel centroid cannot flip a real scene
PLACEMENT_SLACK = 1 / IMAGE_SIZE
#: candidate positions drawn per object, and fresh starts before placement gives up (four large
#: triangles, the most crowded scene, need a few starts)
PLACEMENT_TRIES, PLACEMENT_RESTARTS = 64, 1000
#: per relation: the axis (0 x, 1 y) and the sign of (second - first) along it when the relation holds
RELATION_AXIS = ((0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0))

# --- caption words ---------------------------------------------------------------------------------
SIZE_WORDS = (("small", "little"), ("large", "big"))
RELATION_WORDS = (("to the left of", "left of"), ("to the right of", "right of"), ("above", "over"),
                  ("below", "under"))
NUMBER_WORDS = ("one", "two", "three", "four")
#: the hard negatives of a relation or binding caption (:func:`swapped_twins`), in ``text_negatives`` order
TWINS = ("color_swap", "shape_swap", "relation_reversed")
#: ``(singular, plural)`` lead-ins; :func:`caption_text`'s ``wording`` picks one, a size and a relation synonym
LEADS = (("", ""), ("there is ", "there are "), ("a picture of ", "a picture of "))
WORDINGS = len(LEADS) * 2 * 2

_TOKEN = re.compile(r"[a-z]+|\d+|,")
_SIZE_OF_WORD = {word: size for size, words in enumerate(SIZE_WORDS) for word in words}
_SHAPE_OF_WORD = {**{shape: i for i, shape in enumerate(SHAPES)}, **{shape + "s": i for i, shape in enumerate(SHAPES)}}
_COUNT_OF_WORD = {word: n for n, word in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven",
                                                    "eight", "nine", "ten", "eleven", "twelve"))}
#: relation phrases as word tuples, longest first so "to the left of" wins over "left of"
_RELATION_PHRASES = sorted(((tuple(phrase.split()), r) for r, phrases in enumerate(RELATION_WORDS)
                            for phrase in phrases), key=lambda item: -len(item[0]))
#: lead-ins the parser skips (the data's and a few more)
_READ_LEADS = (("there", "is"), ("there", "are"), ("a", "picture", "of"), ("an", "image", "of"),
               ("a", "photo", "of"), ("an", "image", "with"))
_SCENE_WORDS = set(COLORS) | set(_SHAPE_OF_WORD) | set(_SIZE_OF_WORD) | set(_COUNT_OF_WORD)
_OBJECT = "[a|count] [size] colour shape"


class FreeTextCaption(ValueError):
    """Text that names no colour, shape, size or count: not a scene caption at all."""


@dataclass(frozen=True)
class Named:
    """An object a caption names: indices in Shapes' ``SHAPES`` and ``COLORS``, and in ``SIZES`` or
    ``None`` when the caption leaves the size free."""

    shape: int
    color: int
    size: int | None = None

    def allows(self, found: SceneObject) -> bool:
        return found.shape == self.shape and found.color == self.color and self.size in (None, found.size)


@dataclass(frozen=True)
class SceneCaption:
    """What a caption asks of an image: exactly ``objects`` (a count repeats its object; caption
    order) and, for a relation, ``RELATIONS[relation]`` from the first object to the second."""

    kind: str
    objects: tuple[Named, ...]
    relation: int | None = None

    @property
    def pairs(self) -> set[tuple[int, int]]:
        """The (colour, shape) pairs it names."""
        return {(named.color, named.shape) for named in self.objects}


@dataclass(frozen=True)
class SceneObject:
    """An object drawn on, or seen in, an image: indices in ``SHAPES``, ``COLORS``, ``SIZES`` and its
    centroid ``x, y`` in canvas units ([0, 1], y down)."""

    shape: int
    color: int
    size: int
    x: float
    y: float


@dataclass(frozen=True)
class Scene:
    """One item: its caption and the caption's text, the objects in slot order (see the module
    docstring), and how each is drawn (radius in canvas units, brightness in [0.85, 1])."""

    caption: SceneCaption
    text: str
    objects: tuple[SceneObject, ...]
    radii: tuple[float, ...]
    brightness: tuple[float, ...]

    def attributes(self) -> np.ndarray:
        """``int64 27``: the ``attributes`` row (``ATTRIBUTE_NAMES``)."""
        row = np.full(len(ATTRIBUTE_NAMES), -1, dtype=np.int64)
        row[0] = KINDS.index(self.caption.kind)
        row[1] = -1 if self.caption.relation is None else self.caption.relation
        row[2] = len(self.objects)
        for slot in range(MAX_OBJECTS):
            start = 3 + 6 * slot
            row[start] = int(slot < len(self.objects))
            if slot < len(self.objects):
                found = self.objects[slot]
                row[start + 1:start + 6] = (found.shape, found.color, found.size, pixel(found.x), pixel(found.y))
        return row


def pixel(coordinate: float) -> int:
    """The pixel (column or row, 0-63) a canvas coordinate falls in."""
    return min(max(int(coordinate * IMAGE_SIZE), 0), IMAGE_SIZE - 1)


# --- what a caption means ----------------------------------------------------------------------------
def relation_holds(relation: int, first: SceneObject, second: SceneObject, margin: float = RELATION_MARGIN) -> bool:
    """Whether ``first`` is ``RELATIONS[relation]`` ``second``: its centroid at least ``margin`` beyond
    the other's along the relation's axis (whatever their offset along the other axis)."""
    axis, sign = RELATION_AXIS[relation]
    first_xy, second_xy = (first.x, first.y), (second.x, second.y)
    return sign * (second_xy[axis] - first_xy[axis]) >= margin


def match_scene(caption: SceneCaption, objects: tuple[SceneObject, ...] | list[SceneObject]
                ) -> tuple[SceneObject, ...] | None:
    """The objects in the caption's slots when the image holding ``objects`` is what the caption says
    (exactly the named objects, nothing else, and the relation), else ``None``. A counted group comes
    back left to right."""
    if len(objects) != len(caption.objects):
        return None
    for order in itertools.permutations(objects):  # at most 4! = 24
        if not all(named.allows(found) for named, found in zip(caption.objects, order)):
            continue
        if caption.relation is not None and not relation_holds(caption.relation, order[0], order[1]):
            continue
        return tuple(sorted(order, key=lambda found: found.x)) if caption.kind == "counting" else order
    return None


def swapped_twins(caption: SceneCaption) -> dict[str, SceneCaption]:
    """A relation or binding caption's twins (``TWINS``) that mean something else: its two objects'
    colours swapped (sizes stay in their places), their shapes swapped, and, for a relation, the
    relation reversed ("left of" <-> "right of", "above" <-> "below"). None for other kinds, and none
    that means what the caption means (a binding of two red objects of one size with their shapes
    swapped names the same pair). A twin can still be true of an image where the caption leaves a size
    free ("a red circle and a small red square" shape-swapped, of two small objects):
    ``hard_negatives`` and ``metrics.scenes.hard_negative_accuracy`` leave those out."""
    if caption.kind not in ("relation", "binding"):
        return {}
    first, second = caption.objects
    twins = {"color_swap": replace(caption, objects=(
                 replace(first, color=second.color), replace(second, color=first.color))),
             "shape_swap": replace(caption, objects=(
                 replace(first, shape=second.shape), replace(second, shape=first.shape)))}
    if caption.relation is not None:
        twins["relation_reversed"] = replace(caption, relation=caption.relation ^ 1)  # RELATIONS pairs
        return {name: twin for name, twin in twins.items() if twin != caption}
    return {name: twin for name, twin in twins.items() if Counter(twin.objects) != Counter(caption.objects)}


def wording_of(scene: Scene) -> int:
    """The wording (``caption_text``'s) of the item's text, so its twins are written alike."""
    return next(w for w in range(WORDINGS) if caption_text(scene.caption, w) == scene.text)


# --- captions: writing and reading ---------------------------------------------------------------------
def _object_words(named: Named, size_word: int, plural: bool = False) -> str:
    size = "" if named.size is None else SIZE_WORDS[named.size][size_word % 2] + " "
    return f"{size}{COLORS[named.color]} {SHAPES[named.shape]}{'s' if plural else ''}"


def caption_text(caption: SceneCaption, wording: int = 0) -> str:
    """The caption in words; ``wording`` (wrapping around ``WORDINGS``) picks the lead-in and the size
    and relation synonyms. ``wording=0`` is the canonical form ("a large red circle")."""
    lead, size_word, relation_word = wording % len(LEADS), (wording // len(LEADS)) % 2, (wording // len(LEADS) // 2) % 2
    objects = caption.objects
    if caption.kind == "counting":
        count = len(objects)
        return LEADS[lead][count > 1] + f"{NUMBER_WORDS[count - 1]} {_object_words(objects[0], size_word, count > 1)}"
    phrases = [f"a {_object_words(named, size_word)}" for named in objects]
    joint = f" {RELATION_WORDS[caption.relation][relation_word]} " if caption.kind == "relation" else " and "
    return LEADS[lead][0] + joint.join(phrases)


def parse_scene_caption(text: str) -> SceneCaption:
    """Read a scene caption: the data's wordings, and more (lead-ins such as "an image of", digits for
    counts, "a red circle, a blue square and a green triangle", "two red circles and a blue square").

    Raises:
        FreeTextCaption: the text names no colour, shape, size or count (not a scene caption).
        ValueError: one line naming the word: an unknown colour or shape, an object missing its
            colour or shape, a count outside 1-4, more than 4 objects (the canvas fits no more),
            a relation between other than two single objects, or a word where none belongs.
    """
    words = _TOKEN.findall(text.lower())
    if not _SCENE_WORDS.intersection(words) and not any(word.isdigit() for word in words):
        raise FreeTextCaption(f"caption {text!r} is not a scene caption: it names no colour, shape, size or count "
                              f"(scene captions read like 'a large red circle', 'a red circle to the left of a blue "
                              f"square', 'a red circle and a blue square', 'three green triangles')")
    for lead in _READ_LEADS:
        if tuple(words[:len(lead)]) == lead:
            words = words[len(lead):]
            break
    tokens = _join_relation_phrases(words)
    groups, joins, position = [], [], 0
    while True:
        group, position = _object_phrase(tokens, position, text)
        groups.append(group)
        if position == len(tokens):
            break
        token = tokens[position]
        if token not in ("and", ",") and token not in RELATIONS:
            raise ValueError(f"caption {text!r}: unexpected {token!r} after an object; join objects with 'and' or "
                             f"a relation ({', '.join(p for phrases in RELATION_WORDS for p in phrases)})")
        joins.append(token)
        position += 1 + (token == "," and position + 1 < len(tokens) and tokens[position + 1] == "and")
    total = sum(count for count, _, _ in groups)
    if total > MAX_OBJECTS:
        raise ValueError(f"caption {text!r} names {total} objects; the canvas fits at most {MAX_OBJECTS}")
    relations = [join for join in joins if join in RELATIONS]
    if relations:
        if len(groups) != 2 or total != 2:
            raise ValueError(f"caption {text!r}: {relations[0]!r} relates exactly two single objects, "
                             f"as in 'a red circle {relations[0]} a blue square'")
        return SceneCaption("relation", (groups[0][2], groups[1][2]), RELATIONS.index(relations[0]))
    if len(groups) == 1:
        count, counted, named = groups[0]
        return SceneCaption("counting" if counted else "single", (named,) * count)
    return SceneCaption("binding", tuple(named for count, _, named in groups for _ in range(count)))


def _join_relation_phrases(words: list[str]) -> list[str]:
    """Words, with each relation phrase ("to the left of") replaced by its ``RELATIONS`` name."""
    tokens, position = [], 0
    while position < len(words):
        for phrase, relation in _RELATION_PHRASES:
            if tuple(words[position:position + len(phrase)]) == phrase:
                tokens.append(RELATIONS[relation])
                position += len(phrase)
                break
        else:
            tokens.append(words[position])
            position += 1
    return tokens


def _object_phrase(tokens: list[str], position: int, text: str) -> tuple[tuple[int, bool, Named], int]:
    """``[a|an|the|count] [size] colour shape`` from ``tokens[position:]``: ``((count, counted, named), next)``."""
    def at(offset: int = 0) -> str | None:
        return tokens[position + offset] if position + offset < len(tokens) else None

    def ends(token: str | None) -> bool:
        return token is None or token in ("and", ",") or token in RELATIONS

    count, counted = 1, False
    if at() in ("a", "an", "the"):
        position += 1
    elif at() is not None and (at() in _COUNT_OF_WORD or at().isdigit()):
        word = at()
        count, counted = _COUNT_OF_WORD[word] if word in _COUNT_OF_WORD else int(word), True
        if not 1 <= count <= MAX_OBJECTS:
            raise ValueError(f"caption {text!r}: count {word!r} is outside 1-{MAX_OBJECTS}; "
                             f"the canvas holds 1-{MAX_OBJECTS} objects")
        position += 1
    size = None
    if at() in _SIZE_OF_WORD:
        size = _SIZE_OF_WORD[at()]
        position += 1
    word = at()
    if word in COLORS:
        color = COLORS.index(word)
        position += 1
    elif ends(word):
        before = f"after {tokens[position - 1]!r}" if position else "at the start"
        raise ValueError(f"caption {text!r}: an object is missing {before}; name one as '{_OBJECT}'")
    elif word in _SHAPE_OF_WORD:
        raise ValueError(f"caption {text!r}: {word!r} has no colour; colours: {', '.join(COLORS)}")
    elif word in _SCENE_WORDS or word.isdigit():
        raise ValueError(f"caption {text!r}: unexpected {word!r} where the colour goes; name an object as '{_OBJECT}'")
    elif at(1) in _SHAPE_OF_WORD or not ends(at(1)):  # an unknown word where the colour goes
        raise ValueError(f"caption {text!r}: unknown colour {word!r}; colours: {', '.join(COLORS)}")
    else:  # a lone word where the object goes names its shape
        raise ValueError(f"caption {text!r}: unknown shape {word!r}; shapes: {', '.join(SHAPES)}")
    word = at()
    if ends(word):
        raise ValueError(f"caption {text!r}: no shape after {COLORS[color]!r}; shapes: {', '.join(SHAPES)}")
    if word in _SCENE_WORDS and word not in _SHAPE_OF_WORD:
        raise ValueError(f"caption {text!r}: unexpected {word!r} where the shape goes; name an object as '{_OBJECT}'")
    if word not in _SHAPE_OF_WORD:
        raise ValueError(f"caption {text!r}: unknown shape {word!r}; shapes: {', '.join(SHAPES)}")
    return (count, counted, Named(_SHAPE_OF_WORD[word], color, size)), position + 1


# --- drawing ---------------------------------------------------------------------------------------------
def draw_caption(kind: str, heldout: bool, rng: np.random.Generator) -> SceneCaption:
    """A caption of ``kind``: from ``SEEN_PAIRS`` only, or, when ``heldout``, naming one or more of
    ``HELDOUT_PAIRS``. Every size is stated with probability 1/2 (a counted group's once for all)."""
    def named(pair: tuple[int, int], sized: bool | None = None) -> Named:
        color, shape = pair
        stated = rng.random() < 0.5 if sized is None else sized
        return Named(shape, color, int(rng.integers(len(SIZES))) if stated else None)

    pool = HELDOUT_PAIRS if heldout else SEEN_PAIRS
    first = pool[rng.integers(len(pool))]
    if kind == "single":
        return SceneCaption(kind, (named(first),))
    if kind == "counting":
        count = int(rng.integers(1, MAX_OBJECTS + 1))
        return SceneCaption(kind, (named(first),) * count)
    # two different objects: from the seen pairs, or one held-out pair and any other pair, in either order
    others = [pair for pair in (ALL_PAIRS if heldout else SEEN_PAIRS) if pair != first]
    pairs = [first, others[rng.integers(len(others))]]
    if rng.random() < 0.5:
        pairs.reverse()
    objects = (named(pairs[0]), named(pairs[1]))
    relation = int(rng.integers(len(RELATIONS))) if kind == "relation" else None
    return SceneCaption(kind, objects, relation)


def draw_scene(caption: SceneCaption, rng: np.random.Generator, text: str | None = None) -> Scene:
    """A scene ``caption`` is true of: free sizes drawn, radii jittered, positions drawn uniformly over
    the canvas where the objects fit apart (and, for a relation, hold it with a pixel to spare)."""
    sizes = [int(rng.integers(len(SIZES))) if named.size is None else named.size for named in caption.objects]
    radii = [SIZE_RADIUS[size] * (1 + RADIUS_JITTER * (2 * rng.random() - 1)) for size in sizes]
    brightness = 0.85 + 0.15 * rng.random(len(sizes))
    bounds = [BOUNDING[named.shape] * radius for named, radius in zip(caption.objects, radii)]
    centres = _place(bounds, caption.relation, rng)
    objects = [SceneObject(named.shape, named.color, size, float(x), float(y))
               for named, size, (x, y) in zip(caption.objects, sizes, centres)]
    order = list(range(len(objects)))
    if caption.kind == "counting":  # slots of a counted group go left to right
        order.sort(key=lambda i: objects[i].x)
    return Scene(caption, caption_text(caption) if text is None else text, tuple(objects[i] for i in order),
                 tuple(float(radii[i]) for i in order), tuple(float(brightness[i]) for i in order))


def _place(bounds: list[float], relation: int | None, rng: np.random.Generator) -> np.ndarray:
    """``N,2`` centres for objects with these bounding radii: each in turn at the first of
    ``PLACEMENT_TRIES`` uniform candidates that keeps ``GAP`` from those placed (and puts the second
    object where the relation holds); a fresh start when none does."""
    for _ in range(PLACEMENT_RESTARTS):
        centres: list[np.ndarray] = []
        for index, bound in enumerate(bounds):
            low = bound + EDGE
            candidates = low + (1 - 2 * low) * rng.random((PLACEMENT_TRIES, 2))
            fits = np.ones(PLACEMENT_TRIES, dtype=bool)
            for centre, other in zip(centres, bounds):
                fits &= np.hypot(*(candidates - centre).T) >= bound + other + GAP
            if index == 1 and relation is not None:
                axis, sign = RELATION_AXIS[relation]
                fits &= sign * (candidates[:, axis] - centres[0][axis]) >= RELATION_MARGIN + PLACEMENT_SLACK
            if not fits.any():
                break
            centres.append(candidates[fits.argmax()])
        else:
            return np.stack(centres)
    raise RuntimeError(f"no placement of objects with bounding radii {bounds} after {PLACEMENT_RESTARTS} starts")


def render_scene(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """``3,size,size`` float32 in [-1, 1]: every object of ``scene`` on black, anti-aliased from its
    signed distance as Shapes draws one (``shapes.render_frames``), evaluated only in the window
    that holds it (a quarter of the canvas or less, which makes rendering several times faster)."""
    canvas = np.full((3, size, size), -1.0, dtype=np.float32)
    for found, radius, brightness in zip(scene.objects, scene.radii, scene.brightness):
        reach = BOUNDING[found.shape] * radius + 1.0 / size
        left, right = max(0, int((found.x - reach) * size)), min(size, int(np.ceil((found.x + reach) * size)))
        top, bottom = max(0, int((found.y - reach) * size)), min(size, int(np.ceil((found.y + reach) * size)))
        x = ((np.arange(left, right, dtype=np.float32) + 0.5) / size - np.float32(found.x))[None, :]
        y = ((np.arange(top, bottom, dtype=np.float32) + 0.5) / size - np.float32(found.y))[:, None]
        coverage = np.clip(0.5 - _signed_distance(found.shape, x, y, radius) * size, 0.0, 1.0).astype(np.float32)
        tint = COLOR_RGB[found.color] * np.float32(brightness)
        window = canvas[:, top:bottom, left:right]
        np.maximum(window, coverage[None] * (2 * tint[:, None, None]) - 1.0, out=window)
    return canvas


@functools.cache
def _corpus() -> tuple[str, ...]:
    """Captions holding every word of every wording: each object (sized or not) in each kind."""
    partner = Named(SHAPES.index("square"), COLORS.index("blue"))
    captions = []
    for (color, shape), size in itertools.product(ALL_PAIRS, (None, *range(len(SIZES)))):
        named = Named(shape, color, size)
        for wording in range(WORDINGS):
            captions.append(caption_text(SceneCaption("single", (named,)), wording))
            captions.append(caption_text(SceneCaption("binding", (named, partner)), wording))
            captions += [caption_text(SceneCaption("counting", (named,) * count), wording)
                         for count in range(1, MAX_OBJECTS + 1)]
            captions += [caption_text(SceneCaption("relation", (named, partner), relation), wording)
                         for relation in range(len(RELATIONS))]
    return tuple(captions)


@functools.cache
def _longest_caption() -> int:
    return max(len(_TOKEN.findall(c)) for c in _corpus())


class ScenesDataset(Dataset):
    """``size`` items of one split, each drawn and rendered on access."""

    def __init__(self, size: int, seed: int, split: str, modalities: list[str],
                 tokenizer: CaptionTokenizer | None, hard_negatives: bool = False,
                 kinds: tuple[str, ...] = KINDS) -> None:
        self.size, self.seed, self.split = size, seed, split
        self.hard_negatives, self.kinds = hard_negatives, kinds
        self.split_id = SCENE_SPLITS.index(split)
        self.modalities = set(modalities)
        self.tokenizer = tokenizer
        self._encoded: dict[str, tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return self.size

    def scene(self, index: int) -> Scene:
        """Item ``index``'s caption, text and objects (exact centroids), without rendering."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        rng = np.random.default_rng([self.seed, self.split_id, index])
        caption = draw_caption(self.kinds[index % len(self.kinds)], self.split == "heldout", rng)
        text = caption_text(caption, int(rng.integers(WORDINGS)))
        return draw_scene(caption, rng, text)

    def encode(self, text: str) -> tuple[Tensor, Tensor]:
        """``(text, text_mask)`` of one caption, each ``L``; cached, since the grammar is finite."""
        if text not in self._encoded:
            encoded = self.tokenizer.encode(text)
            self._encoded[text] = (encoded["text"][0], encoded["text_mask"][0])
        return self._encoded[text]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        scene = self.scene(index)
        item = {"attributes": torch.from_numpy(scene.attributes())}
        if "image" in self.modalities:
            item["image"] = torch.from_numpy(render_scene(scene))
        if "text" in self.modalities:
            text, text_mask = self.encode(scene.text)
            item["text"], item["text_mask"] = text.clone(), text_mask.clone()
            if self.hard_negatives:
                item["text_negatives"], item["text_negatives_mask"] = self.twins(scene)
        return item

    def twins(self, scene: Scene) -> tuple[Tensor, Tensor]:
        """``(text_negatives long 3,L, text_negatives_mask bool 3,L)``: the caption's swapped twins
        (``TWINS`` order) that are false of the image, in the caption's wording; a missing twin is a row
        of padding with no real token. Outside the heldout split no twin names a held-out pair, so
        those combinations stay out of training even as negatives."""
        text, mask = self.encode(scene.text)
        rows, masks = [torch.zeros_like(text)] * len(TWINS), [torch.zeros_like(mask)] * len(TWINS)
        wording = wording_of(scene)
        for name, twin in swapped_twins(scene.caption).items():
            if match_scene(twin, scene.objects) is not None:
                continue
            if self.split != "heldout" and twin.pairs & set(HELDOUT_PAIRS):
                continue
            rows[TWINS.index(name)], masks[TWINS.index(name)] = self.encode(caption_text(twin, wording))
        return torch.stack(rows), torch.stack(masks)


class ScenesDataModule(MultimodalDataModule):
    """One to four Shapes objects on a 64 px canvas with single, relation, binding and counting
    captions; six colour-shape pairs held out of training (see the module docstring).

    Args:
        modalities: which of ``image``, ``text`` each batch carries.
        train_size: items in the train split (> 0); none holds a pair of ``HELDOUT_PAIRS``.
        val_size: items in the val split (> 0), none with a held-out pair.
        test_size: items in the test split (> 0), none with a held-out pair.
        heldout_size: items in the ``heldout`` split (> 0), each naming one or more held-out pairs.
        batch_size: samples per batch and per process.
        num_workers: ``DataLoader`` worker processes.
        seed: seeds the data (>= 0); every split derives its own stream from it.
        max_text_length: padded caption length, ``[BOS]`` and ``[EOS]`` included.
        tokenizer_path: a local ``tokenizer.json`` to use instead of training one on the captions.
        hard_negatives: with ``text``, each item also carries its caption's swapped twins as
            ``text_negatives`` and ``text_negatives_mask`` (``ScenesDataset.twins``), which the Aligner
            contrasts its image with (``objectives/aligner.py``).
        train_kinds: the caption kinds the train split draws, cycling in this order (default: all of
            ``KINDS``); val, test and heldout keep every kind. A captioner trained without binding
            captions names the relation of every two objects it sees.
    """

    available_modalities = ("image", "text")
    name = "scenes"
    #: nothing for the per-attribute judges and caption parser of ``metrics/coherence.py``: a scene is
    #: right only as a whole, which ``metrics/scenes.py`` scores
    attribute_reading = AttributeReading()

    def __init__(self, modalities: list[str] | None = None, train_size: int = 50_000, val_size: int = 500,
                 test_size: int = 500, heldout_size: int = 500, batch_size: int = 64, num_workers: int = 0,
                 seed: int = 0, max_text_length: int = 24, tokenizer_path: str | None = None,
                 hard_negatives: bool = False, train_kinds: list[str] | None = None) -> None:
        super().__init__(["image", "text"] if modalities is None else modalities, batch_size=batch_size,
                         num_workers=num_workers, seed=seed, max_text_length=max_text_length,
                         tokenizer_path=tokenizer_path)
        sizes = {"train": train_size, "val": val_size, "test": test_size, "heldout": heldout_size}
        for split, value in sizes.items():
            if value < 1:
                raise ValueError(f"{split}_size must be >= 1, got {value}")
        if "text" in self.modalities and max_text_length < _longest_caption() + 2:
            raise ValueError(f"max_text_length: {max_text_length} would cut captions; scene captions need "
                             f">= {_longest_caption() + 2} tokens with [BOS] and [EOS]")
        self.split_sizes = sizes
        self.hard_negatives = hard_negatives
        self.train_kinds = KINDS if train_kinds is None else tuple(train_kinds)
        unknown = [kind for kind in self.train_kinds if kind not in KINDS]
        if unknown or not self.train_kinds:
            raise ValueError(f"train_kinds: {'unknown ' + repr(unknown[0]) if unknown else 'none given'}; "
                             f"allowed: {', '.join(KINDS)}")

    def dataset(self, split: str) -> Dataset:
        """The split's dataset; ``heldout`` besides ``train``, ``val`` and ``test``."""
        if split not in SCENE_SPLITS:
            raise ValueError(f"split: unknown {split!r}; allowed: {', '.join(SCENE_SPLITS)}")
        if split not in self._splits:
            self._splits[split] = self.build_split(split)
        return self._splits[split]

    def caption_corpus(self) -> list[str]:
        """Captions that hold every word of the grammar (the same whatever the modalities)."""
        return list(_corpus())

    def build_split(self, split: str) -> Dataset:
        tokenizer = self.tokenizer if "text" in self.modalities else None
        return ScenesDataset(self.split_sizes[split], self.seed, split, self.modalities, tokenizer,
                             self.hard_negatives and "text" in self.modalities,
                             self.train_kinds if split == "train" else KINDS)

    def source_spec(self) -> dict[str, Any]:
        return {"image_size": IMAGE_SIZE, "image_channels": 3, "attribute_names": list(ATTRIBUTE_NAMES),
                "attribute_sizes": list(ATTRIBUTE_SIZES)}
