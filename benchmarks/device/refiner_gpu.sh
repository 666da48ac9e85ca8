#!/usr/bin/env bash
# The refiner benchmark (3 seeds) on the lent GPU machine, from the repository root there:
#   carry [".devenv", ".refdata"]; command: bash benchmarks/device/refiner_gpu.sh
# .devenv: ../shared/device/pack_env.sh (nnU-Net 2.8.1 and its dependencies, diffusers 0.42.1, importlib-metadata).
# .refdata/data.tar.xz: nnUNet_raw and nnUNet_preprocessed of the benchmark's dataset, made here (the generator
# reads nilearn's template, which that machine lacks). Everything is kept in .gpuwork (git-ignored), so a second
# call on the still-warm machine continues where the first stopped. Results go to $OUT.
set -uo pipefail
mkdir -p /tmp/site && tar -xJf .devenv/site.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nnUNet_compile=false
mkdir -p /tmp/bin
for name in nnUNetv2_train:nnunetv2.run.run_training:run_training_entry \
            nnUNetv2_plan_and_preprocess:nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:plan_and_preprocess_entry; do
  IFS=: read -r cmd module func <<< "$name"
  printf '#!/bin/sh\nexec python3 -c "import sys; from %s import %s as f; sys.argv[0] = \\"%s\\"; sys.exit(f())" "$@"\n' \
    "$module" "$func" "$cmd" > "/tmp/bin/$cmd"
  chmod +x "/tmp/bin/$cmd"
done
export PATH=/tmp/bin:$PATH
W=$PWD/.gpuwork
mkdir -p "$W" && { [ -d "$W/nnUNet_raw" ] || tar -xJf .refdata/data.tar.xz -C "$W"; }
python3 -c "import torch; assert torch.cuda.is_available(); print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
B="python3 -m benchmarks.benchmark_refiner -o $W --seeds 0 1 2 --num_processes 1"
start=$(date +%s)
$B --device cuda --jobs 15 --train_only > "$OUT/train.log" 2>&1 || {
  echo "training on cuda failed:"; grep -v "^ *$" "$OUT/train.log" | tail -8
  echo "falling back to training on the CPUs"; $B --device cpu --jobs 15 --train_only >> "$OUT/train.log" 2>&1; }
echo "trainings done after $(( $(date +%s) - start )) s"
for s in 0 1 2; do  # score the seeds in parallel; the last call below gathers them (everything is reused)
  python3 -m benchmarks.benchmark_refiner -o "$W" --seeds $s --num_processes 1 --device cuda > "$OUT/score_seed$s.log" 2>&1 &
done
wait
echo "seeds scored after $(( $(date +%s) - start )) s"
$B --device cuda > "$OUT/refiner.log" 2>&1 || tail -20 "$OUT/refiner.log"
cp "$W/refiner.json" "$W/refiner.csv" "$OUT/" 2>/dev/null
tar -C "$W" -cJf "$OUT/logs.tar.xz" logs
echo "all done after $(( $(date +%s) - start )) s"
sed -n '/^method/,$p' "$OUT/refiner.log"
