"""GenEval-style scoring of text -> image samples of scenes (``datamodules/scenes.py``).

The first ``num_captions`` captions of a split are each sampled ``samples_per_caption`` times; the
scenes judge (``metrics/scene_judge.py``, trained on real renders only) reads every sample's
objects, and a sample is right when it shows exactly what its caption says
(``datamodules.scenes.match_scene``: the named objects with their colours and stated sizes,
nothing else, the relation between the centroids, the exact count). Per caption kind, and overall
(all samples), the share of samples right; besides, GenEval's "two objects": the share of binding
and relation samples that show both named shapes, whatever their colours, sizes, places or
company. The seen captions are the ``test`` split's; the held-out ones the ``heldout`` split's,
each naming a (colour, shape) pair no training image shows.

Placement variety: per caption and object slot, the variance of the centroids of the samples
that are right (at least two), summed over x and y; per kind, the square root of its total over
the total of the same slots' variance in ``real_draws`` fresh real scenes of each caption (the
data's own placements for that caption). 1 is the real data's variety; the issue asks >= 0.8.

The real renders scored the same way (:class:`RealScenes` as the sampler; :func:`real_ceiling`)
are the ceiling. ``benchmarks/scenes_judge.py`` writes it with the judge's accuracy.

Two readers of scenes are scored here too, against the truth the data knows, no judge needed:

* an aligner, ARO-style (Yuksekgonul et al. 2023; :func:`hard_negative_accuracy`): each relation or
  binding image against its caption and each of the caption's swapped twins (:func:`swapped_twins`:
  the two objects' colours swapped, their shapes swapped, the relation reversed), in the same
  wording; right when the caption scores higher than the twin (a tie counts half, so a bag-of-words
  encoder, which cannot tell a caption from its colour- or shape-swapped twin, scores 0.5);
* a captioner (:func:`caption_accuracy`): a caption is right when it parses
  (``parse_scene_caption``) and states exactly the image's objects (colours, shapes, any size it
  states) and, for an image of a relation, a relation that holds (``states_scene``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmgen_lightning.datamodules.scenes import (KINDS, SCENE_SPLITS, TWINS, WORDINGS, Scene, SceneCaption,
                                                SceneObject, caption_text, draw_scene, match_scene,
                                                parse_scene_caption, render_scene, swapped_twins,
                                                wording_of)
from mmgen_lightning.metrics.evaluator import chunk_seed
from mmgen_lightning.metrics.scene_judge import SceneJudge, get_scene_judge

#: captions -> ``B,3,64,64`` images in [-1, 1], one per caption (``model_sampler`` wraps a family)
Sampler = Callable[[list[str]], Tensor]
#: the table's rows: the caption kinds, GenEval's two-object reading, and all samples
ROWS = ("single", "two_objects", "relation", "binding", "counting", "overall")
#: which split holds the seen captions and which the held-out ones
SPLITS = {"seen": "test", "heldout": "heldout"}
#: ``(images B,3,64,64, captions) -> B`` similarity of each image to its caption (``aligner_similarity``)
Similarity = Callable[[Tensor, list[str]], Tensor]
#: images ``B,3,64,64`` -> one caption each (``model_captioner`` wraps a family)
Captioner = Callable[[Tensor], list[str]]


def model_sampler(model, **sampling: Any) -> Sampler:
    """A sampler drawing from ``model.generate`` (any family that serves text -> image), captions
    encoded by the model's own tokenizer; ``sampling``: the family's knobs (steps, guidance_scale, ...)."""
    def sample(captions: list[str]) -> Tensor:
        conditions = model.tokenizer.encode(captions)
        return model.generate(conditions, num_samples=len(captions), to="image", **sampling)["image"]

    return sample


class RealScenes:
    """A sampler that renders, for every caption, a fresh real scene the caption is true of (drawn
    as the data draws them, from the global torch RNG, which the evaluation seeds per chunk)."""

    def __call__(self, captions: list[str]) -> Tensor:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return torch.from_numpy(np.stack([render_scene(draw_scene(parse_scene_caption(text), rng))
                                          for text in captions]))


def shows_named_shapes(caption: SceneCaption, objects: tuple[SceneObject, ...]) -> bool:
    """GenEval's two-object test: every shape the caption names is among ``objects`` (as often as
    named), whatever the colours, sizes, places or other objects."""
    named, seen = Counter(n.shape for n in caption.objects), Counter(o.shape for o in objects)
    return all(seen[shape] >= count for shape, count in named.items())


def score_split(sampler: Sampler, datamodule, judge: SceneJudge, split: str, num_captions: int = 64,
                samples_per_caption: int = 8, batch_size: int = 64, seed: int = 0,
                real_draws: int = 64) -> dict[str, Any]:
    """Accuracy per caption kind and placement variety of ``sampler`` on the first ``num_captions``
    captions of ``split`` (see the module docstring)."""
    if num_captions < 1 or samples_per_caption < 2 or batch_size < 1 or real_draws < 2:
        raise ValueError(f"num_captions >= 1, samples_per_caption >= 2, batch_size >= 1 and real_draws >= 2, got "
                         f"{num_captions}, {samples_per_caption}, {batch_size} and {real_draws}")
    dataset = datamodule.dataset(split)
    scenes = [dataset.scene(i) for i in range(min(num_captions, len(dataset)))]
    prompts = [scene.text for scene in scenes for _ in range(samples_per_caption)]
    read: list[tuple[SceneObject, ...]] = []
    for chunk, start in enumerate(range(0, len(prompts), batch_size)):
        with torch.random.fork_rng():  # every chunk seeded on its own (CPU and CUDA), the global RNG left as it was
            torch.manual_seed(chunk_seed(seed, chunk, SCENE_SPLITS.index(split)))
            images = sampler(prompts[start:start + batch_size])
        read += judge.read(images)

    right = {kind: [] for kind in KINDS}
    two_objects: list[bool] = []
    variances = {kind: [0.0, 0.0] for kind in KINDS}  # sums of (generated, real) slot variances
    for index, scene in enumerate(scenes):
        caption, seen = scene.caption, read[index * samples_per_caption:(index + 1) * samples_per_caption]
        matched = [match_scene(caption, objects) for objects in seen]
        right[caption.kind] += [m is not None for m in matched]
        if caption.kind in ("relation", "binding"):
            two_objects += [shows_named_shapes(caption, objects) for objects in seen]
        placed = [m for m in matched if m is not None]
        if len(placed) >= 2:
            rng = np.random.default_rng([seed, SCENE_SPLITS.index(split), index])
            real = [draw_scene(caption, rng).objects for _ in range(real_draws)]
            variances[caption.kind][0] += _slot_variance(placed)
            variances[caption.kind][1] += _slot_variance(real)

    samples = {kind: len(values) for kind, values in right.items()}
    accuracy = {kind: float(np.mean(values)) if values else None for kind, values in right.items()}
    accuracy["two_objects"] = float(np.mean(two_objects)) if two_objects else None
    accuracy["overall"] = float(np.mean([v for values in right.values() for v in values]))
    spread = {kind: float(np.sqrt(generated / real)) if real > 0 else None
              for kind, (generated, real) in variances.items()}
    return {"split": split, "captions": len(scenes), "samples_per_caption": samples_per_caption,
            "samples": len(prompts), "samples_per_kind": samples, "accuracy": {row: accuracy[row] for row in ROWS},
            "spread": spread}


def _slot_variance(placements: list[tuple[SceneObject, ...]]) -> float:
    """Sum over slots of the centroid variance (x plus y, unbiased) across ``placements``."""
    centroids = np.array([[(o.x, o.y) for o in objects] for objects in placements])  # samples,slots,2
    return float(centroids.var(axis=0, ddof=1).sum())


def evaluate_scenes(sampler: Sampler, datamodule, judge: SceneJudge | None = None, num_captions: int = 64,
                    samples_per_caption: int = 8, batch_size: int = 64, seed: int = 0, ceiling: bool = True,
                    real_draws: int = 64) -> dict[str, Any]:
    """The scenes table of ``sampler``: :func:`score_split` on the seen (``test``) and the held-out
    captions, and with ``ceiling`` the real renders' own scores (``real``). ``judge``: default the
    cached judge of this data (:func:`~mmgen_lightning.metrics.scene_judge.get_scene_judge`)."""
    judge = judge or get_scene_judge(datamodule)
    options = {"num_captions": num_captions, "samples_per_caption": samples_per_caption, "batch_size": batch_size,
               "seed": seed, "real_draws": real_draws}
    report = {group: score_split(sampler, datamodule, judge, split, **options) for group, split in SPLITS.items()}
    if ceiling:
        report["real"] = real_ceiling(datamodule, judge, **options)
    return report


def real_ceiling(datamodule, judge: SceneJudge | None = None, **options: Any) -> dict[str, Any]:
    """The table of real renders (:class:`RealScenes`) read by the same judge: the best a model can score."""
    judge = judge or get_scene_judge(datamodule)
    return {group: score_split(RealScenes(), datamodule, judge, split, **options) for group, split in SPLITS.items()}


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def scenes_markdown(report: dict[str, Any]) -> str:
    """:func:`evaluate_scenes`' report as a Markdown table: share of samples right per caption kind on
    seen and held-out captions (and the real renders' share, the ceiling), and placement variety."""
    groups = [("seen", report["seen"]), ("held-out", report["heldout"])]
    if "real" in report:
        real = report["real"]
        groups += [("seen, real renders", real["seen"]), ("held-out, real renders", real["heldout"])]
    seen, heldout = report["seen"], report["heldout"]
    lines = [f"Scenes: {seen['captions']} seen and {heldout['captions']} held-out captions, "
             f"{seen['samples_per_caption']} samples each; share of samples fully right", "",
             "| caption kind | " + " | ".join(name for name, _ in groups) +
             " | placement spread, seen / held-out (of real) |",
             "|---" * (len(groups) + 2) + "|"]
    for row in ROWS:
        spread = f"{_cell(seen['spread'].get(row))} / {_cell(heldout['spread'].get(row))}" if row in KINDS else ""
        lines.append(f"| {row.replace('_', ' ')} | " + " | ".join(_cell(g["accuracy"][row]) for _, g in groups) +
                     f" | {spread} |")
    return "\n".join(lines) + "\n"


# --- readers of scenes: an aligner against swapped twins, a captioner against the truth -------------
def aligner_similarity(aligner) -> Similarity:
    """Cosine of each image and its caption in an Aligner's space (captions read by its own tokenizer)."""
    @torch.no_grad()
    def similarity(images: Tensor, captions: list[str]) -> Tensor:
        images = aligner.embed({"image": images.to(aligner.device)}, "image")
        return (images * aligner.embed_captions(captions)).sum(-1).cpu()

    return similarity


def hard_negative_accuracy(similarity: Similarity, datamodule, split: str = "test", num_items: int = 400,
                           batch_size: int = 64) -> dict[str, Any]:
    """ARO-style accuracy (see the module docstring) on the relation and binding items among the first
    ``num_items`` of ``split``: overall, per twin and per caption kind, with how many pairs each holds
    (an image meets each twin that is false of it)."""
    if num_items < 1 or batch_size < 1:
        raise ValueError(f"num_items and batch_size must be >= 1, got {num_items} and {batch_size}")
    dataset = datamodule.dataset(split)
    rows = []  # (index, kind, twin, caption text, twin text)
    for index in range(min(num_items, len(dataset))):
        scene = dataset.scene(index)
        wording = wording_of(scene)
        rows += [(index, scene.caption.kind, name, scene.text, caption_text(twin, wording))
                 for name, twin in swapped_twins(scene.caption).items() if match_scene(twin, scene.objects) is None]
    wins = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images = torch.stack([dataset[index]["image"] for index, *_ in chunk])
        right = similarity(images, [row[3] for row in chunk])
        wrong = similarity(images, [row[4] for row in chunk])
        wins += (0.5 * (right > wrong).float() + 0.5 * (right >= wrong).float()).tolist()
    def share(keep: Callable[[tuple], bool]) -> dict[str, Any]:
        chosen = [win for row, win in zip(rows, wins) if keep(row)]
        return {"accuracy": float(np.mean(chosen)) if chosen else None, "pairs": len(chosen)}

    return {"split": split, "items": min(num_items, len(dataset)), **share(lambda row: True),
            "per_twin": {twin: share(lambda row, twin=twin: row[2] == twin) for twin in TWINS},
            "per_kind": {kind: share(lambda row, kind=kind: row[1] == kind) for kind in ("relation", "binding")}}


def states_scene(text: str, scene: Scene) -> bool:
    """Whether ``text`` is a scene caption that states exactly ``scene``'s objects (colours, shapes,
    each size it states) and, when the scene's own caption is a relation, a relation that holds."""
    try:
        caption = parse_scene_caption(text)
    except ValueError:
        return False
    if scene.caption.relation is not None and caption.relation is None:
        return False
    return match_scene(caption, scene.objects) is not None


def model_captioner(model, **sampling: Any) -> Captioner:
    """A captioner from ``model.generate`` (any family that serves image -> text), decoded by its tokenizer."""
    @torch.no_grad()
    def caption(images: Tensor) -> list[str]:
        ids = model.generate({"image": images}, num_samples=len(images), to="text", **sampling)["text"]
        return model.tokenizer.decode(ids)

    return caption


def caption_accuracy(captioner: Captioner, datamodule, split: str = "heldout", num_items: int = 400,
                     batch_size: int = 64, kinds: Sequence[str] = KINDS) -> dict[str, Any]:
    """Share of the first ``num_items`` images of ``split`` whose caption states the scene
    (:func:`states_scene`), overall and per kind of the item's own caption, with a few wrong captions."""
    if num_items < 1 or batch_size < 1:
        raise ValueError(f"num_items and batch_size must be >= 1, got {num_items} and {batch_size}")
    dataset = datamodule.dataset(split)
    count = min(num_items, len(dataset))
    right: dict[str, list[bool]] = {kind: [] for kind in kinds}
    mistakes = []
    for start in range(0, count, batch_size):
        indices = range(start, min(start + batch_size, count))
        captions = captioner(torch.stack([dataset[i]["image"] for i in indices]))
        for index, text in zip(indices, captions):
            scene = dataset.scene(index)
            ok = states_scene(text, scene)
            right[scene.caption.kind].append(ok)
            if not ok and len(mistakes) < 10:
                mistakes.append({"item": index, "truth": scene.text, "caption": text})
    every = [ok for values in right.values() for ok in values]
    return {"split": split, "items": count, "accuracy": float(np.mean(every)),
            "per_kind": {kind: float(np.mean(values)) if values else None for kind, values in right.items()},
            "mistakes": mistakes}
