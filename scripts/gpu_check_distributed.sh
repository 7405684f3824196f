#!/bin/bash
# A short GPU check of data-parallel training (run on a machine with CUDA, from the repository root):
# DistributedDataParallel over nccl with one process on one GPU, then a resume of that run, then a
# plain one-process run of the same configuration for comparison: the evaluations should agree.
# Usage: bash scripts/gpu_check_distributed.sh   (DEVICE=cpu HIDDEN=32 tries the script itself on a CPU)
set -euo pipefail
OUT=${OUT:-/tmp/rnnlab-gpu-ddp}
PY=${PYTHON:-python3}
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
rm -rf "$OUT" && mkdir -p "$OUT"
FLAGS="language --device ${DEVICE:-cuda} --hidden ${HIDDEN:-256} --steps 40 --eval-every 20 --eval-tokens 5000 --samples 0 --lr-schedule constant"
$PY -m torch.distributed.run --nproc-per-node 1 --master-addr 127.0.0.1 --master-port 29531 -m rnnlab train $FLAGS --steps 20 --out "$OUT/ddp"
$PY -m torch.distributed.run --nproc-per-node 1 --master-addr 127.0.0.1 --master-port 29532 -m rnnlab train --resume "$OUT/ddp" --steps 40
$PY -m rnnlab train $FLAGS --out "$OUT/plain"
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("ddp", "plain"):
    records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    train = [r for r in records if r["kind"] == "train"]
    print(name, "validation", [round(r["loss"], 4) for r in evals], "chars/s", round(train[-1]["tokens_per_s"]))
PY
