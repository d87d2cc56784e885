#!/usr/bin/env bash
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps .whl/*.whl; export PYTHONPATH=$PWD
# GPU check of the fast training step (issue 11): at most about 5 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh          # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --cpu    # the same parts, tiny and on the CPU (to try the script)
#
# Parts (each under its own `timeout`, so one failure does not stop the rest; logs in ${OUT:-gpu_out}/):
#   tests          the GPU tests of tests/test_train_step.py (amp bf16/fp16, compile, resume with a scaler,
#                  capture-safety on CUDA)
#   bench_steps    benchmarks/bench_d2c.py training-step rows: D2CModel.optimize_parameters of both stages
#                  from options/train_D2C_{div,conv}_x4.yml and the hand-written step, 4 x 96^2, TF32 and bf16
#   bench_compiled the same rows, bf16, train:compile reduce-overhead (only with GPU_CHECK_COMPILED_BENCH=1)
#   infer_tf32/16  inference rows at 1x3x256^2 (TF32, bf16)
#   train_*        300-iteration d2csr/train.py runs (paper network, batch 4 x 96^2 LR from scikit-image photos):
#                  TF32, bf16, bf16 + compile
#   infer_memory   benchmarks/bench_inference.py: peak CUDA memory and time per LR megapixel of each inference
#                  mode (exact, LR half whole, bounded, untiled), fp16 autocast as inference runs on a GPU
#   tests_gpu      every other GPU test of the suite (-k cuda)
# then one table (summary.md, summary.json).
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
MODE=gpu
[ "${1:-}" = "--cpu" ] && MODE=cpu
STATUS="$OUT/status.tsv"
: > "$STATUS"

part() {  # part NAME SECONDS COMMAND...: stdout -> OUT/NAME.out, stderr -> OUT/NAME.err
  local name=$1 limit=$2; shift 2
  local start end rc
  start=$(date +%s%N)
  timeout -k 5 "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  rc=$?
  end=$(date +%s%N)
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( (end - start) / 1000000 ))e-3" >> "$STATUS"
  echo "[gpu_check] $name: rc=$rc ($(tail -n 1 "$OUT/$name.err" 2>/dev/null | cut -c1-160))"
}

if [ "$MODE" = gpu ]; then
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' | tee "$OUT/device.txt"
  part prepare 25 $PY benchmarks/gpu_check.py prepare --mode gpu --out "$OUT" --iters 300
  part tests 60 $PY -m pytest tests/test_train_step.py -q -x -p no:cacheprovider -k cuda
  part bench_steps 75 $PY benchmarks/bench_d2c.py --device cuda --steps only --train-batch 4 --train-patch 96 \
    --train-dtype fp32,bf16 --json
  part infer_tf32 18 $PY benchmarks/bench_d2c.py --device cuda --size 256 --skip-train --steps off --repeats 10 --json
  part infer_bf16 18 $PY benchmarks/bench_d2c.py --device cuda --size 256 --skip-train --steps off --repeats 10 \
    --dtype bf16 --json
  for run in tf32 bf16; do
    part train_$run "$([ $run = tf32 ] && echo 45 || echo 45)" $PY d2csr/train.py -opt "$OUT/opts/train_$run.yml"
  done
  part train_compiled 80 $PY d2csr/train.py -opt "$OUT/opts/train_compiled.yml"
  part infer_memory 90 $PY benchmarks/bench_inference.py --device cuda --sizes 1024x1024 2048x2048 \
    --modes exact whole-lr bounded untiled --max_gb 60
  part tests_gpu 90 $PY -m pytest tests -q -p no:cacheprovider -k cuda --deselect tests/test_train_step.py
  if [ "${GPU_CHECK_COMPILED_BENCH:-0}" = 1 ]; then  # compiles both stages: about 2 more minutes
    part bench_compiled 150 $PY benchmarks/bench_d2c.py --device cuda --steps only --train-batch 4 --train-patch 96 \
      --train-dtype bf16 --train-compile reduce-overhead --train-repeats 10 --json
  fi
else
  part prepare 120 $PY benchmarks/gpu_check.py prepare --mode cpu --out "$OUT" --iters 6
  part tests 300 $PY -m pytest tests/test_train_step.py -q -x -p no:cacheprovider -k "cuda or fp16_scaler"
  part bench_steps 300 $PY benchmarks/bench_d2c.py --smoke --steps only --train-dtype fp32,bf16 --json
  part infer_tf32 300 $PY benchmarks/bench_d2c.py --smoke --skip-train --steps off --json
  part infer_bf16 300 $PY benchmarks/bench_d2c.py --smoke --skip-train --steps off --dtype bf16 --json
  for run in tf32 bf16 compiled; do
    part train_$run 300 $PY d2csr/train.py -opt "$OUT/opts/train_$run.yml"
  done
  part infer_memory 300 $PY benchmarks/bench_inference.py --sizes 64x64 96x96 --modes exact bounded --bounded_tile 32
  part bench_compiled 300 $PY benchmarks/bench_d2c.py --smoke --steps only --train-dtype bf16 \
    --train-compile default --compile-backend aot_eager --json
fi
for name in gpu_check_tf32 gpu_check_bf16 gpu_check_compiled gpu_check_cpu_tf32 gpu_check_cpu_bf16 gpu_check_cpu_compiled; do
  [ -d "experiments/$name" ] && cp experiments/$name/train_*.log "$OUT/" 2>/dev/null
done
timeout 15 $PY benchmarks/gpu_check.py summarize --out "$OUT"
