#!/usr/bin/env bash
# Every GPU performance measurement in one device call (the lease is short: see README.md, "On the GPU machine").
#
#   bash benchmarks/gpu_session.sh                    # on the GPU machine, after unpacking .devenv
#   DEVICE=cpu QUICK=1 OUT=/tmp/o bash benchmarks/gpu_session.sh   # dry run of every command on a CPU
#
# Stages run in order of value, each under its own time limit (580 s in all: give the run timeout_s=600),
# so a slow stage cannot starve the next; all logs go to $OUT/session.log, numbers to $OUT/*.json
# (6 files: the device tool returns at most 8).
set -uo pipefail

DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
OUT=${OUT:?set OUT to the folder for results}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
work=$(mktemp -d /tmp/pdddpm_gpu.XXXXXX)
export nnUNet_raw=$work/raw nnUNet_preprocessed=$work/preprocessed nnUNet_results=$work/results
export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-12}
log=$OUT/session.log
py=${PYTHON:-python3}

stage() {  # stage NAME SECONDS COMMAND...: run, log, never stop the session
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date +%T), limit ${limit}s): $*" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log" | tail -n 25
    echo "=== $name: exit ${PIPESTATUS[0]}" | tee -a "$log"
}

if [ "$QUICK" = 1 ]; then
    # a WMH-sized case costs 25 GFLOP per evaluation and patch: only the pre-segmenter fits a CPU dry run
    quick=(--quick) wmh=(--quick --preset wmh --cases 1 --variants preseg)
    demo=(-profile tiny) iters=(--iterations 3 --warmup 1 --drain 2)
else
    quick=() wmh=(--preset wmh --cases 1 --variants preseg,pdddpm,ddim,dpm++ --max_batch_size 80 --compile)
    demo=(-profile gpu -num_train 12 -num_test 2) iters=(--iterations 40 --warmup 10)
fi

{ nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"; \
  $py -c "import torch; print('torch', torch.__version__)"; } | tee -a "$log"

# 1. the DDPM update alone (tensor step vs diffusers' step)
stage step 30 $py -m benchmarks.benchmark_step -device "$DEVICE" --batch 20 --json "$OUT/step.json"
# 2. the 40 %-of-peak target: paper-sized 2D denoiser, every sampling path, batches 5/40/80, compiled
stage paper 150 $py -m benchmarks.benchmark_sampling --synthetic "${quick[@]}" -device "$DEVICE" --cases 1 \
    --variants preseg,pdddpm,ddim,dpm++ --ablation --batch_sizes 5,40,80 --compile --json "$OUT/sampling_paper.json"
# 3. the < 30 s (T'=300, ensemble 5, ddpm) and < 2 s (<= 20 steps) targets on a WMH-sized scan, default width
stage wmh 120 $py -m benchmarks.benchmark_sampling --synthetic "${wmh[@]}" -device "$DEVICE" \
    --json "$OUT/sampling_wmh.json"
# 4. training: the default PDDDPMTrainer on the demo's WMH-like data, one and four noise draws per image
stage dataset 60 $py -m nnunet_pdddpm.cli.make_demo_dataset "${demo[@]}" -d 985 --name GPUBench -np 8
stage preprocess 60 $py -c "import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import \
plan_and_preprocess_entry as m; sys.argv = ['nnUNetv2_plan_and_preprocess', '-d', '985', '-c', '2d', '-np', '8']; m()"
for draws in 1 4; do
    stage "train_draws$draws" 80 $py -m benchmarks.benchmark_training -d 985 -c 2d -tr PDDDPMTrainer \
        -device "$DEVICE" "${iters[@]}" --draws "$draws" --json "$OUT/training_draws$draws.json"
done
rm -rf "$work"
echo "=== done ($(date +%T)); results in $OUT" | tee -a "$log"
