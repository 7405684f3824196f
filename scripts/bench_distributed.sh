#!/bin/bash
# Throughput of the default language model: 1 process vs 2 (torchrun), one thread each, back to back
# (docs/BENCHMARKS.md). Usage: bash scripts/bench_distributed.sh; one line per run: chars/s at each
# logged step, rank 0's process CPU seconds and wall seconds of training.

BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin}
mkdir -p ${OUT:-/tmp/rnnlab-bench-ddp} && cd ${OUT:-/tmp/rnnlab-bench-ddp}
FLAGS="--threads 1 --steps 16 --log-every 4 --eval-every 100000 --checkpoint-every 100000 --samples 0"
run() {  # $1 label, rest: command; kill once the last train record is written (skip the final report)
  label=$1; shift; out=run-$label-$RANDOM; load=$(cut -d' ' -f1 /proc/loadavg)
  setsid "$@" $FLAGS --out $out > $out.log 2>&1 &
  pid=$!
  for i in $(seq 1 900); do
    if [ -f $out/metrics.jsonl ] && grep -q '"step": 16' $out/metrics.jsonl; then break; fi
    if ! kill -0 $pid 2>/dev/null; then break; fi
    sleep 1
  done
  kill -- -$pid 2>/dev/null; wait $pid 2>/dev/null
  echo "$label load=$load $(python3 -c "
import json,sys
r=[json.loads(l) for l in open('$out/metrics.jsonl') if '\"train\"' in l]
print(' '.join(f\"{x['step']}:{x['tokens_per_s']:.0f}\" for x in r), 'cpu_s', r[-1]['cpu_s'], 'wall_s', r[-1]['elapsed_s'])
")"
}
for rep in 1 2 3; do
  run 1proc $BIN/python -m rnnlab train
  run 2proc $BIN/torchrun --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 2962$rep -m rnnlab train
done
