#!/usr/bin/env bash
# One training run on a GPU machine that has no copy of the data (models/README.md, "Training on a GPU").
#
# Run from the repository root on the GPU machine, with the packed training split in .gpu/
# (made beforehand by `python -m sqsam_train.pack --out .gpu/train-pack.pkl --data-cache runs/X/data-cache.pkl`)
# and OUT set to an existing folder, as an absolute path, that receives the results:
#
#   mkdir -p results && OUT=$PWD/results bash models/train-on-gpu.sh RUN DEADLINE_S TRAIN_ARGS...
#
# It times the corrective-click rule (CPU vs batched on the GPU), unpacks the data, trains
# `sqsam_train.train --run-dir runs/RUN TRAIN_ARGS...` (checkpoint every 30 s) until the run's
# own --minutes budget ends or DEADLINE_S seconds after this script started, whichever is first,
# and writes to $OUT: RUN.pt (the weights, float16), log.jsonl, train.out, click-rule.json and
# gpu.csv (GPU utilisation every 10 s).
set -o pipefail
run=$1 deadline=$2
shift 2
out=${OUT:?set OUT to the folder for the results}
export PYTHONPATH=$PWD:$PWD/models PYTHONUNBUFFERED=1
cd models || exit 1
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 10 > "$out/gpu.csv" &
    sampling=$!
    trap 'kill $sampling 2> /dev/null' EXIT
fi
python3 -m sqsam_train.batched_clicks --batch 64 --size 320 | tee "$out/click-rule.json"
python3 -m sqsam_train.pack --unpack ../.gpu/train-pack.pkl --cache "../runs/$run/data-cache.pkl" || exit 1
echo "training from ${SECONDS} s; deadline ${deadline} s"
timeout $((deadline - SECONDS)) python3 -m sqsam_train.train --run-dir "../runs/$run" --ckpt-minutes 0.5 "$@" 2>&1 \
    | tr '\r' '\n' | awk 'NR % 6 == 1 || !/it\/s/' > "$out/train.out"
python3 - "$run" "$out" <<'PY'
import json, sys
import torch
run, out = sys.argv[1:]
state = torch.load(f"../runs/{run}/last.ckpt", map_location="cpu", weights_only=False)
# float16, as checkpoints/*.pt: half the size; a later run continues from them with --init .gpu/RUN.pt
torch.save({"net": {k: v.half() if v.is_floating_point() else v for k, v in state["net"].items()}}, f"{out}/{run}.pt")
log = [json.loads(line) for line in open(f"../runs/{run}/log.jsonl")]
steady = log[len(log) // 4:]
rate = (steady[-1]["step"] - steady[0]["step"]) / max(steady[-1]["time"] - steady[0]["time"], 1e-9)
print(f"step {state['step']}, {state['elapsed'] / 60:.1f} min of training, steady {rate:.2f} steps/s; "
      f"last data wait {log[-1].get('data_s', float('nan')):.3f} s, step {log[-1].get('step_s', float('nan')):.3f} s")
PY
cp "../runs/$run/log.jsonl" "$out/"
echo "done at ${SECONDS} s"
