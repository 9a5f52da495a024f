#!/usr/bin/env bash
# The CUDA check (issue 14): on one CUDA GPU, in well under 8 minutes, it installs what the GPU
# machine's image lacks from wheels this script downloaded beforehand, runs the CUDA tests,
# trains DNN and DCNv2 for 2 epochs on frappe-x1 and ml1m-ctr on the GPU and on that machine's
# CPU, scores the ml1m DCNv2 plain and with UTTSI@2.0 on both, pre-trains HeteGenCTR for one
# epoch on the GPU, and prints samples/s, latency and test AUC side by side (records:
# $OUT/device.jsonl and device-pretrain.json, machine naming the GPU; copy them into
# benchmarks/results/ and run `genctr report`).
#
#   bash benchmarks/device_check.sh --prepare   # here, with network: packages + a data copy, packed
#                                               # into benchmarks/.device (git-ignored, never committed)
#   GENCTR_COMMIT=<commit> bash benchmarks/device_check.sh [--tests-only]   # there (device run: carry
#                                               # benchmarks/.device; $OUT brings device.jsonl back)
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=benchmarks/.device
if [ "${1:-}" = "--prepare" ]; then
  rm -rf "$STAGE" && mkdir -p "$STAGE/wheels" "$STAGE/site"
  # the GPU image has torch, numpy, scipy, scikit-learn, pyarrow, rich, typer, filelock, pyyaml,
  # matplotlib and pytest (Python 3.12); these it lacks. Unpacked and xz-packed: the carried
  # tree must stay under 64 MiB.
  .venv/bin/pip download --quiet --dest "$STAGE/wheels" --only-binary=:all: --no-deps \
    --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 polars==2.1.0 polars-runtime-32==2.1.0 pydantic==2.14.4 \
    pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  # the serving stack and its test client, pure Python (for the CUDA serve test)
  .venv/bin/pip download --quiet --dest "$STAGE/wheels" --only-binary=:all: --no-deps \
    fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 h11==0.16.0 anyio==4.16.0 \
    annotated-doc==0.0.7 opentelemetry-api==1.45.2 typing-extensions==4.16.0 httpx2==2.16.2 \
    httpcore2==2.16.2 truststore==0.10.5
  for wheel in "$STAGE"/wheels/*.whl; do unzip -q -o "$wheel" -d "$STAGE/site"; done
  tar -C "$STAGE" -cf - site | xz -6 -T0 > "$STAGE/site.tar.xz"
  # research-use data: a working copy to carry, never committed (benchmarks/.device is ignored)
  tar -C ../shared/data -cf - movielens-1m frappe/original frappe/nfm_libfm | xz -6 -T0 > "$STAGE/data.tar.xz"
  rm -rf "$STAGE/wheels" "$STAGE/site"
  du -sh "$STAGE"
  exit 0
fi
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results}
UNPACKED=$(mktemp -d)
tar -C "$UNPACKED" -xJf "$STAGE/site.tar.xz"
mkdir -p "$UNPACKED/data" "$OUT" && tar -C "$UNPACKED/data" -xJf "$STAGE/data.tar.xz"
export PYTHONPATH="$PWD/src:$UNPACKED/site" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
# a failing CUDA test must not cost the numbers (device time is scarce): both steps run, the
# script fails if either did
tests=0 && timeout 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_runtime.py \
  tests/test_serve.py::test_a_run_loaded_on_cuda_serves_and_predicts_like_the_cpu || tests=$?
if [ "${1:-}" = "--tests-only" ]; then echo "CUDA tests exit $tests"; exit "$tests"; fi
checks=0 && timeout 330 "$PY" benchmarks/device_check.py --data-dir "$UNPACKED/data" --out "$OUT" "$@" || checks=$?
echo "CUDA tests exit $tests, device checks exit $checks"
[ "$tests" = 0 ] && [ "$checks" = 0 ]
