"""Reference-free scores of a generator from an Aligner: no attributes and no judges needed, so they
work on a user's own ``ManifestDataModule`` data.

For a direction ``source -> target`` the generator serves, each test item's condition is given to
the generator and the sample, the condition and the item's real target are embedded by the aligner:

- ``alignment``: the mean cosine of sample and condition (CLIPScore, Hessel et al. 2021, without its
  rescaling), beside ``real_data``, the mean cosine of the real target and the condition;
- ``r_precision``: the share of samples whose own condition ranks first among ``pool`` conditions
  (its own and ``pool - 1`` others of the split drawn at random, seeded), as AttnGAN's R-precision
  (Xu et al. 2018), beside ``real_data_r_precision``, the same for the real targets (the ceiling
  this aligner can read: items whose conditions say the same thing cannot be told apart).

For a direction whose target is ``image``, ``reference`` compares the samples with real *training* images
(at most ``reference_limit`` of them, drawn at random, seeded) in the space of the aligner's normalised image
embedding (:meth:`~mmgen_lightning.models.aligner.Aligner.embed`, the unit vectors alignment reads), and gives
every number for the real images of the evaluated split too (``real_data``): they are new draws from the data,
so they score what a generator that draws like the data scores at this sample count.

- ``fid``, ``kid`` and ``kid_std``, ``precision``, ``recall``: :class:`~mmgen_lightning.metrics.quality.SampleQuality`
  of the images against the training ones. FID is biased upward at small counts; both rows use the same count,
  which is what makes them comparable;
- ``nearest_cosine_distance`` (mean) and ``nearest_cosine_distance_p5`` (5th percentile) of
  ``min_j 1 - cos(x, t_j)`` over the training images ``t_j``; ``nearest_pixel_mse`` and ``nearest_pixel_mse_p5``
  of ``min_j mean (x - t_j)^2`` over the pixels (in [-1, 1], at the aligner's image size), to the pixel-nearest one;
- ``closer_than_median_real``: the share whose nearest cosine distance is below the real images' median: near 1
  for a generator that copies training images, near 0.5 for one that draws new images as the data does.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate

from mmgen_lightning.batch import parse_direction
from mmgen_lightning.metrics.quality import SampleQuality
from mmgen_lightning.modalities import get_modality

R_PRECISION_POOL = 100
#: the most training images the ``reference`` scores compare against (``mmgen evaluate --reference-limit``)
REFERENCE_LIMIT = 2000
#: ``k`` of the k-NN precision and recall (Kynkäänniemi et al. 2019): each set needs more items than this
NEAREST_K = 5
DISTRIBUTION_KEYS = ("fid", "kid", "kid_std", "precision", "recall")


def check_pairing(aligner, aligner_path: str | Path, generator, generator_path: str | Path, datamodule,
                  directions: list[str]) -> None:
    """Raise a one-line ``ValueError`` naming both checkpoints when the aligner cannot score a direction, or
    naming the data when it lacks the condition (a manifest without captions for text)."""
    carried = datamodule.data_spec["modalities"]
    for direction in directions:
        sources, target = parse_direction(direction)
        if len(sources) != 1:
            raise ValueError(f"direction {direction!r}: alignment scores one condition against the sample")
        missing = [m for m in (sources[0], target) if m not in aligner.modalities]
        if missing:
            role = "target" if missing[0] == target else "condition"
            raise ValueError(f"--aligner {aligner_path} aligns {', '.join(aligner.modalities)}, which do not include "
                             f"the {role} {missing[0]!r} of {direction} from --ckpt {generator_path}; train an aligner "
                             f"on {sources[0]} and {target}")
        for modality in (sources[0], target):
            if modality not in carried:
                where = getattr(datamodule, "manifest", None)
                if where is not None:
                    raise ValueError(f"manifest {where} has {get_modality(modality).missing_from_manifest()}, so "
                                     f"{direction} from --ckpt {generator_path} cannot be scored by {modality} "
                                     "alignment")
                raise ValueError(f"direction {direction}: the data carries no {modality!r} "
                                 f"(it has {', '.join(carried)})")


def default_alignment_directions(generator, aligner, datamodule) -> list[str]:
    """Single-source directions the generator serves and the data carries (the aligner is checked after)."""
    carried = set(datamodule.data_spec["modalities"]) | {"text"}  # a missing caption column is reported, not skipped
    return [f"{source}->{target}" for target in generator.output_modalities for source in generator.condition_modalities
            if source != target and source in carried and generator.serves((source,), target)]


def _aligner_inputs(aligner, values: dict[str, Tensor], modality: str, tokenizer) -> dict[str, Tensor]:
    """The generator's tensors in the aligner's terms (``Modality.conform``): captions re-tokenised by the
    aligner's tokenizer, images/videos resized to its size."""
    conformed = get_modality(modality).conform(values, aligner.data_spec, tokenizer, aligner.tokenizer)
    return {key: value.to(aligner.device) for key, value in conformed.items()}


def r_precision(samples: Tensor, conditions: Tensor, pool: int = R_PRECISION_POOL, seed: int = 0) -> tuple[float, int]:
    """``(share, pool)``: how often sample ``i`` (``N,D`` unit vectors) is closer to its own condition
    (``N,D``) than to every one of ``pool - 1`` other conditions drawn at random (ties count against it)."""
    count = samples.shape[0]
    pool = min(pool, count)
    generator = torch.Generator().manual_seed(seed)
    hits = 0
    for i in range(count):
        others = torch.randperm(count - 1, generator=generator)[: pool - 1]
        others = others + (others >= i).long()
        own = samples[i] @ conditions[i]
        hits += int(bool((conditions[others] @ samples[i] < own).all()))
    return hits / max(count, 1), pool


@dataclass
class TrainReference:
    """Real training images as the aligner sees them: ``features: N,embed_dim`` unit vectors
    (``Aligner.embed``) and ``pixels: N,C*H*W`` in [-1, 1] at the aligner's image size."""

    features: Tensor
    pixels: Tensor


@torch.no_grad()
def train_reference(aligner, datamodule, limit: int = REFERENCE_LIMIT, batch_size: int = 64,
                    seed: int = 0) -> TrainReference:
    """At most ``limit`` images of the train split, a random subset drawn from ``seed``."""
    dataset = datamodule.dataset("train")
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    features, pixels = [], []
    for indices in chosen.split(batch_size):
        images = [item["image"] for item in map(dataset.__getitem__, indices.tolist())
                  if "image" in item]  # a manifest row skipped on error carries no image
        if images:
            conformed = _aligner_inputs(aligner, {"image": torch.stack(images)}, "image", None)
            features.append(aligner.embed(conformed, "image"))
            pixels.append(conformed["image"].flatten(1))
    if not features:
        raise ValueError(f"the {datamodule.data_spec['dataset']} train split has no images to compare image samples "
                         "with")
    return TrainReference(torch.cat(features), torch.cat(pixels))


def nearest_cosine_distance(features: Tensor, reference: Tensor, chunk: int = 1024) -> Tensor:
    """``N``: ``min_j 1 - cos(f_i, r_j)`` of ``N,D`` unit vectors against ``M,D`` ones (``chunk,M`` at a time)."""
    return torch.cat([(1 - part @ reference.T).amin(1).clamp_min(0) for part in features.split(chunk)])


def nearest_pixel_mse(images: Tensor, reference: Tensor, chunk: int = 256) -> Tensor:
    """``B``: ``min_j mean_p (x_ip - r_jp)^2`` of ``B,C,H,W`` images against ``M,C*H*W`` flattened ones
    (``chunk,M`` distances at a time)."""
    flat = images.flatten(1).float()
    return torch.cat([torch.cdist(part, reference).amin(1).square() / flat.shape[1] for part in flat.split(chunk)])


def distribution_scores(reference: Tensor, features: Tensor, seed: int = 0) -> dict[str, float | None]:
    """FID, KID (mean and standard deviation over subsets), precision and recall of ``features`` against
    ``reference`` (``N,D`` each), by :class:`~mmgen_lightning.metrics.quality.SampleQuality`; each ``None``
    when either set has ``NEAREST_K`` items or fewer, too few for k-NN manifolds."""
    if min(len(reference), len(features)) <= NEAREST_K:
        return dict.fromkeys(DISTRIBUTION_KEYS)
    quality = SampleQuality(features.shape[1], kid_subset_size=min(1000, len(reference), len(features)),
                            nearest_k=NEAREST_K, seed=seed)
    quality.update(reference.cpu(), real=True)
    quality.update(features.cpu(), real=False)
    scores = quality.compute()
    return {key: scores[key] for key in DISTRIBUTION_KEYS}


def reference_scores(reference: TrainReference, samples: Tensor, real: Tensor, sample_pixel_mse: Tensor,
                     real_pixel_mse: Tensor, seed: int = 0) -> dict[str, Any]:
    """The ``reference`` entry of a direction's row (see the module's docstring), from the samples' and the
    real images' ``N,embed_dim`` unit vectors and ``N`` nearest pixel distances."""
    features = reference.features.cpu()
    sample_nearest, real_nearest = nearest_cosine_distance(samples, features), nearest_cosine_distance(real, features)
    real_median = real_nearest.quantile(0.5)

    def side(images: Tensor, nearest: Tensor, pixel_mse: Tensor) -> dict[str, float | None]:
        return {**distribution_scores(features, images, seed),
                "nearest_cosine_distance": nearest.mean().item(),
                "nearest_cosine_distance_p5": nearest.quantile(0.05).item(),
                "nearest_pixel_mse": pixel_mse.mean().item(), "nearest_pixel_mse_p5": pixel_mse.quantile(0.05).item(),
                "closer_than_median_real": (nearest < real_median).float().mean().item()}

    return {"train_images": len(features), "samples": side(samples, sample_nearest, sample_pixel_mse),
            "real_data": side(real, real_nearest, real_pixel_mse)}


@torch.no_grad()
def alignment_scores(generator, aligner, datamodule, directions: list[str], split: str = "test",
                     limit: int | None = None, batch_size: int = 64, seed: int = 0,
                     pool: int = R_PRECISION_POOL, reference_limit: int = REFERENCE_LIMIT,
                     **sampling: Any) -> list[dict[str, Any]]:
    """One row per direction: ``alignment``, ``real_data``, ``r_precision``, ``real_data_r_precision``, ``pool``,
    and for an image target ``reference`` (at most ``reference_limit`` training images)."""
    from mmgen_lightning.metrics.evaluator import chunk_seed

    dataset = datamodule.dataset(split)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count < 2:
        raise ValueError(f"split {split!r} has {count} items; alignment needs at least 2")
    data_tokenizer = datamodule.tokenizer if "text" in datamodule.data_spec["modalities"] else None
    targets = {parse_direction(direction)[1] for direction in directions}
    reference = train_reference(aligner, datamodule, reference_limit, batch_size, seed) if "image" in targets else None
    rows = []
    for index, direction in enumerate(directions):
        (source,), target = parse_direction(direction)
        keys = get_modality(source).keys()
        embedded: dict[str, list[Tensor]] = defaultdict(list)
        for chunk, start in enumerate(range(0, count, batch_size)):
            batch = default_collate([dataset[i] for i in range(start, min(start + batch_size, count))])
            batch = {k: v.to(generator.device) for k, v in batch.items() if not k.startswith("_")}
            size = batch[source].shape[0]
            with torch.random.fork_rng():
                torch.manual_seed(chunk_seed(seed, chunk, index))
                samples = generator.generate({k: batch[k] for k in keys}, num_samples=size, to=target, **sampling)
            sample_tokenizer = getattr(generator, "tokenizer", None) or data_tokenizer
            sample_inputs = _aligner_inputs(aligner, samples, target, sample_tokenizer)
            real_inputs = _aligner_inputs(aligner, batch, target, data_tokenizer)
            embedded["sample"].append(aligner.embed(sample_inputs, target))
            embedded["condition"].append(aligner.embed(_aligner_inputs(aligner, batch, source, data_tokenizer), source))
            embedded["real"].append(aligner.embed(real_inputs, target))
            if target == "image":  # per batch, so no image is kept beyond its batch
                embedded["sample_pixel_mse"].append(nearest_pixel_mse(sample_inputs["image"], reference.pixels))
                embedded["real_pixel_mse"].append(nearest_pixel_mse(real_inputs["image"], reference.pixels))
        sample, condition, real = (torch.cat(embedded[k]).cpu() for k in ("sample", "condition", "real"))
        precision, used_pool = r_precision(sample, condition, pool, seed)
        real_precision, _ = r_precision(real, condition, pool, seed)
        row = {"direction": direction, "samples": int(sample.shape[0]),
               "alignment": (sample * condition).sum(1).mean().item(),
               "real_data": (real * condition).sum(1).mean().item(),
               "r_precision": precision, "real_data_r_precision": real_precision, "pool": used_pool}
        if target == "image":
            row["reference"] = reference_scores(reference, sample, real, torch.cat(embedded["sample_pixel_mse"]).cpu(),
                                                torch.cat(embedded["real_pixel_mse"]).cpu(), seed)
        rows.append(row)
    return rows


def alignment_report(generator, generator_path: str | Path, aligner_path: str | Path, datamodule,
                     directions: list[str] | None = None, split: str = "test", limit: int | None = None,
                     batch_size: int = 64, seed: int = 0, reference_limit: int | None = None,
                     **sampling: Any) -> dict[str, Any]:
    """What ``mmgen evaluate --aligner`` adds to a report: the aligner's file and one row per direction
    (``reference_limit``: training images an image target is compared with, ``None``: ``REFERENCE_LIMIT``;
    ``sampling``: the generator's knobs)."""
    from mmgen_lightning.models.aligner import load_aligner

    aligner = load_aligner(aligner_path).to(generator.device)
    directions = directions or default_alignment_directions(generator, aligner, datamodule)
    if not directions:
        raise ValueError(f"--ckpt {generator_path}: {type(generator).__name__} serves no conditional direction "
                         "the aligner could score")
    check_pairing(aligner, aligner_path, generator, generator_path, datamodule, directions)
    return {"aligner": str(aligner_path),
            "rows": alignment_scores(generator, aligner, datamodule, directions, split, limit, batch_size, seed,
                                     reference_limit=REFERENCE_LIMIT if reference_limit is None else reference_limit,
                                     **sampling)}


def alignment_markdown(section: dict[str, Any]) -> str:
    """The ``alignment`` section of a report as a Markdown table, and the image targets' ``reference``
    scores as a second one, each direction's samples beside its real data."""
    lines = [f"Alignment (aligner {Path(section['aligner']).name}):", "",
             "| direction | alignment (cosine) | real data | R-precision | real data R-precision | pool |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['direction']} | {r['alignment']:.3f} | {r['real_data']:.3f} | {r['r_precision']:.3f} | "
              f"{r['real_data_r_precision']:.3f} | {r['pool']} |" for r in section["rows"]]
    compared = [r for r in section["rows"] if "reference" in r]
    if compared:
        lines += ["", (f"Against {compared[0]['reference']['train_images']} training images, in the aligner's image "
                       "embedding (nearest distances: mean / 5th percentile):"), "",
                  ("| direction | images | FID | KID | precision | recall | nearest cosine distance | "
                   "nearest pixel MSE | closer than median real |"), "|---|---|---|---|---|---|---|---|---|"]
        for row in compared:
            for label, side in (("samples", "samples"), ("real data", "real_data")):
                scores = {key: _figure(value) for key, value in row["reference"][side].items()}
                lines.append(f"| {row['direction']} | {label} | {scores['fid']} | "
                             f"{scores['kid']} ± {scores['kid_std']} | {scores['precision']} | {scores['recall']} | "
                             f"{scores['nearest_cosine_distance']} / {scores['nearest_cosine_distance_p5']} | "
                             f"{scores['nearest_pixel_mse']} / {scores['nearest_pixel_mse_p5']} | "
                             f"{scores['closer_than_median_real']} |")
        if any(row["reference"]["samples"]["fid"] is None for row in compared):
            lines += ["", f"n/a: FID, KID, precision and recall need more than {NEAREST_K} images on each side."]
    return "\n".join(lines) + "\n"


def _figure(value: float | None, decimals: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{decimals}f}"


@torch.no_grad()
def retrieval_report(aligner, ckpt: str | Path, datamodule, split: str = "test", limit: int | None = None,
                     batch_size: int = 64, gallery: int = R_PRECISION_POOL) -> dict[str, Any]:
    """What ``mmgen evaluate --ckpt ALIGNER`` reports: recall@1/5/10 in every direction between the aligner's
    modalities that the data carries, each query ranking the items of its block of ``gallery`` consecutive
    items; on data with attributes also ``relevant_hit@k``, where any item stating/showing the same
    compared attributes counts (a caption cannot single out one of several items that fit it)."""
    from mmgen_lightning.metrics.coherence import compared_attributes
    from mmgen_lightning.models.aligner import gallery_recall

    spec = datamodule.data_spec
    modalities = [m for m in aligner.modalities if m in spec["modalities"]]
    if len(modalities) < 2:
        raise ValueError(f"--ckpt {ckpt}: the data carries {', '.join(spec['modalities'])}, fewer than two of the "
                         f"aligner's modalities ({', '.join(aligner.modalities)})")
    dataset = datamodule.dataset(split)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    embedded: dict[str, list[Tensor]] = {m: [] for m in modalities}
    attributes = []
    for start in range(0, count, batch_size):
        batch = default_collate([dataset[i] for i in range(start, min(start + batch_size, count))])
        batch = {k: v.to(aligner.device) for k, v in batch.items() if not k.startswith("_")}
        for m in modalities:
            embedded[m].append(aligner.embed(batch, m).cpu())
        if "attributes" in batch:
            attributes.append(batch["attributes"].cpu())
    vectors = {m: torch.cat(zs) for m, zs in embedded.items()}
    rows = []
    for query in modalities:
        for candidate in modalities:
            if query == candidate:
                continue
            direction = f"{query}->{candidate}"
            row: dict[str, Any] = {"direction": direction, "samples": count, "gallery": min(gallery, count)}
            row.update({f"recall@{k}": v for k, v in gallery_recall(vectors[query], vectors[candidate], gallery).items()})
            compared = compared_attributes(datamodule, direction) if attributes and "attribute_names" in spec else []
            if compared:
                names = list(spec["attribute_names"])
                key = torch.cat(attributes)[:, [names.index(n) for n in compared]]
                relevant = (key[:, None, :] == key[None, :, :]).all(-1)
                hits = gallery_recall(vectors[query], vectors[candidate], gallery, relevant=relevant)
                row.update({"compared_attributes": compared, **{f"relevant_hit@{k}": v for k, v in hits.items()}})
            rows.append(row)
    return {"checkpoint": str(ckpt), "family": type(aligner).__name__, "dataset": spec["dataset"], "split": split,
            "samples": count, "retrieval": rows}


def retrieval_markdown(rows: list[dict[str, Any]]) -> str:
    """The ``retrieval`` rows of an aligner's report as a Markdown table."""
    lines = ["| direction | recall@1 | recall@5 | recall@10 | relevant hit@1 | gallery |", "|---|---|---|---|---|---|"]
    for r in rows:
        hit = r.get("relevant_hit@1")
        lines.append(f"| {r['direction']} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@10']:.3f} | "
                     f"{'' if hit is None else f'{hit:.3f}'} | {r['gallery']} |")
    return "\n".join(lines) + "\n"
