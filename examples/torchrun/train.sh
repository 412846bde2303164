#!/bin/bash
# One node, 2 processes:   bash examples/torchrun/train.sh
# Two nodes (run on each):  NNODES=2 NODE_RANK=<0|1> MASTER=<host of node 0> bash examples/torchrun/train.sh
# Resume after a crash:     bash examples/torchrun/train.sh --ckpt_path runs/captioner_my_data/checkpoints/last.ckpt
set -euo pipefail
NNODES="${NNODES:-1}"; NPROC="${NPROC:-2}"
torchrun --nnodes "${NNODES}" --nproc-per-node "${NPROC}" --node-rank "${NODE_RANK:-0}" \
    --master-addr "${MASTER:-127.0.0.1}" --master-port "${PORT:-29500}" \
    -m mmgen_lightning.cli fit --config examples/torchrun/captioner_manifest.yaml \
    --trainer.num_nodes "${NNODES}" --trainer.devices "${NPROC}" "$@"
