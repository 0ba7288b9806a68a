#!/usr/bin/env bash
# What a lent GPU measures for threed, in about 8 minutes and with no network:
#   1. the CUDA parity tests against the PyTorch references (and the other CUDA tests),
#   2. scripts/bench.py --backends torch cuda at 64 and 128 px on dreamfusion-sd with a random-weight
#      prior of Stable Diffusion 2.1-base's size (weights do not change timings),
#   3. the fp16 VSD LoRA gradient check on that UNet,
#   4. peak GPU memory per stage of dreamfusion-sd, magic3d and gaussian-sd at their own resolutions.
# It writes OUT/*.json, OUT/gpu_check.json (everything merged) and OUT/gpu_check.md (the tables for
# docs/performance.md). A step that fails or runs out of its time is noted and the others still run.
#
#   scripts/gpu_check.sh [OUT]            # on the GPU machine, from the repository root (OUT default: gpu-check)
#   scripts/gpu_check.sh --wheels         # here, with network: fetch into .whl/ the wheels that machine lacks
#
# Packages the GPU image lacks travel as wheels in .whl/ (built or downloaded for its Python and CUDA:
# `--wheels` downloads them for CPython 3.12, manylinux x86-64); they are installed into /tmp/site.
# tiny-cuda-nn and nvdiffrast are not on PyPI: a wheel of each built for that machine's Python and CUDA
# (`pip wheel git+https://github.com/NVlabs/...` on a machine like it) can be dropped into .whl/ too;
# without them their parity tests skip, and the report says so.
set -uo pipefail
cd "$(dirname "$0")/.."

PY_VERSION=${PY_VERSION:-3.12}
WHEELS="diffusers omegaconf antlr4-python3-runtime==4.9.3 trimesh PyMCubes xatlas fast-simplification
point-cloud-utils imageio-ffmpeg beartype nerfacc gsplat"

if [ "${1:-}" = "--wheels" ]; then
  mkdir -p .whl
  for w in $WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$w" || echo "no wheel for $w"
  done
  du -sh .whl
  exit 0
fi

OUT=${1:-gpu-check}
mkdir -p "$OUT"
: > "$OUT/errors.txt"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, note a failure in errors.txt
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit} s)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || echo "$name: exit $rc ($([ "$rc" -eq 124 ] && echo "over ${limit} s" || echo "see $name.log"))" >> "$OUT/errors.txt"
}

python3 - "$OUT/meta.json" <<'PY'
import datetime, json, sys, torch
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
json.dump({"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
           "date": datetime.date.today().isoformat()}, open(sys.argv[1], "w"))
PY

step parity 150 python3 -m pytest -q -p no:cacheprovider --junitxml "$OUT/parity.xml" \
  tests/test_encoding.py tests/test_volume.py tests/test_raster.py tests/test_splat.py tests/test_sds.py \
  tests/test_lora.py tests/test_guidance_conformance.py -k "cuda or parity or float16 or fp16 or gsplat or nvdiffrast"
step prior 60 python3 scripts/gpu_check.py prior "$OUT/sd21-random"
step bench 120 python3 scripts/bench.py --recipe dreamfusion-sd "model=$OUT/sd21-random" --backends torch cuda \
  --resolutions 64 128 --steps 5 --output "$OUT/bench.json"
step lora 60 python3 scripts/gpu_check.py lora --model "$OUT/sd21-random" --output "$OUT/lora.json"
step memory 100 python3 scripts/gpu_check.py memory --model "$OUT/sd21-random" --output "$OUT/memory.json"
rm -rf "$OUT/sd21-random"  # 1.7 GB of random weights
python3 scripts/gpu_check.py table "$OUT" --output "$OUT/gpu_check.md"
