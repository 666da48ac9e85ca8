#!/usr/bin/env bash
# benchmarks/refiner_sampling_study.py on the lent GPU machine, with seed 0's models of the CPU refiner benchmark:
#   carry [".devenv", ".refdata2"]; command: bash benchmarks/device/refiner_sampling_gpu.sh
# .refdata2/work.tar.xz: that work folder's test images and labels and the two fold-0 checkpoints the study reads
# (nnUNetTrainer_refinerCPU and PDDDPMTrainer_refinerCPU, optimiser state dropped), made on the CPU machine.
set -uo pipefail
mkdir -p /tmp/site && tar -xJf .devenv/site.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 nnUNet_compile=false
W=/tmp/studywork
mkdir -p "$W" && tar -xJf .refdata2/work.tar.xz -C "$W" || exit 1
python3 -m benchmarks.refiner_sampling_study -o "$W" --seeds 0 --device cuda 2>&1 | tee "$OUT/study.log"
cp "$W/refiner_sampling.json" "$OUT/" 2>/dev/null
