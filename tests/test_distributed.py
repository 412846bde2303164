"""DDP with 2 CPU processes (gloo) gives the gradients of 1 process on the same global batch for the
Captioner on a manifest, whose ranks hold different numbers of caption tokens; the ranks see disjoint
samples that cover the epoch. (The VAE on streaming shards: tests/datamodules/test_streaming_ddp.py.)"""

import json

import torch

from mmgen_lightning.datamodules.manifest import ManifestDataModule
from mmgen_lightning.models.captioner import Captioner
from tests.datamodules.manifest_corpus import DATA_OPTIONS, write_corpus
from tests.ddp_checks import assert_same_gradients, fit_two_processes, image_keys, one_process_gradients


def test_captioner_on_a_manifest(tmp_path):
    manifest = write_corpus(tmp_path, 8)
    # captions of 1, 3 and 4 words, so the ranks' batches hold different numbers of tokens: the loss must
    # still give the gradient of the token mean over the global batch
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for index, row in enumerate(rows):
        row["caption"] = ["square", row["caption"], row["caption"].replace("a ", "a big ")][index % 3]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = {"manifest": str(manifest), "modalities": ["image", "text"], "split_fractions": [1, 0, 0],
            "batch_size": 2, **DATA_OPTIONS}
    options = {"network": {"width": 16, "encoder_layers": 1, "decoder_layers": 1, "dropout": 0.0},
               "optimization": {"warmup_steps": 0}}
    batches = fit_two_processes(tmp_path, {"class_path": "mmgen_lightning.models.Captioner", "init_args": options},
                                {"class_path": "mmgen_lightning.datamodules.manifest.ManifestDataModule",
                                 "init_args": data})
    seen = [image_keys(torch.cat([b["image"] for b in rank])) for rank in batches]
    assert [len(s) for s in seen] == [4, 4] and not seen[0] & seen[1]
    tokens = [int(rank[0]["text_mask"].sum()) for rank in batches]
    assert tokens[0] != tokens[1], f"the ranks' first batches should differ in caption tokens, got {tokens}"
    model = Captioner(ManifestDataModule(**data).data_spec, **options)
    assert_same_gradients(one_process_gradients(model, tmp_path, [rank[0] for rank in batches]), tmp_path)
