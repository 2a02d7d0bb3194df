#!/usr/bin/env bash
# Build mmcv 2.1.0 with compiled ops against the installed torch, caching the wheel outside the repo.
# No mmcv wheel fits torch 2.14, and mmcv's setup.py pins an old C++ standard that torch 2.14 headers reject,
# so we patch -std=c++14/17 -> c++20 and build without isolation (it must see this venv's torch).
set -euo pipefail
PY=${PY:-.venv/bin/python}
PYABS=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
MMCV_VERSION=2.1.0
TORCH_VERSION=$($PY -c 'import torch; print(torch.__version__.split("+")[0])')
CACHE=${FOURM_BENCH_CACHE:-$HOME/.cache/fourm-bench}/wheels/mmcv-${MMCV_VERSION}-torch${TORCH_VERSION}
mkdir -p "$CACHE"
if ! ls "$CACHE"/mmcv-*.whl >/dev/null 2>&1; then
  echo "[build_mmcv] building mmcv ${MMCV_VERSION} from source for torch ${TORCH_VERSION} (~12 min on 2 cores)"
  work=$(mktemp -d)
  $PY -m pip install -q "setuptools<70" wheel ninja
  # --no-build-isolation: mmcv's setup.py imports pkg_resources and torch even to report its metadata
  $PY -m pip download -q --no-deps --no-binary :all: --no-build-isolation "mmcv==${MMCV_VERSION}" -d "$work"
  tar -xzf "$work"/mmcv-${MMCV_VERSION}.tar.gz -C "$work"
  src="$work/mmcv-${MMCV_VERSION}"
  sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} \
     "$PYABS" -m pip wheel --no-build-isolation --no-deps -w "$work/dist" . )
  cp "$work"/dist/mmcv-*.whl "$CACHE"/
  rm -rf "$work"
fi
$PY -m pip install -q --no-deps "$CACHE"/mmcv-*.whl
