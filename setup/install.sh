#!/usr/bin/env bash
# `make setup`: everything a fresh machine needs, from the repo alone. Idempotent; each step skips itself when done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
t0=$(date +%s)

# 1. Debian packages for the local SLURM cluster (only as root; skipped when already present).
if [ "$(id -u)" = 0 ]; then
  need=()
  for pkg in slurm-wlm slurmdbd munge mariadb-server; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "[setup] apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
else
  echo "[setup] not root: skipping Debian packages (slurm-wlm slurmdbd munge mariadb-server); SLURM tests will skip"
fi

# 2. The virtual environment with torch from this machine's local wheels (never another torch).
[ -x "$PY" ] || python3.11 -m venv .venv
$PY -m pip install -q --upgrade "pip<26.2"
$PY -c 'import torch, torchvision' 2>/dev/null || $PY -m pip install -q torch==2.14.1 torchvision==0.29.1

# 3. mmcv with compiled ops (built once, cached under ~/.cache/fourm-bench).
$PY -c 'import mmcv.ops' 2>/dev/null || bash setup/build_mmcv.sh

# 4. Everything else, pinned in setup/requirements.txt; then this package, editable.
$PY -m pip install -q "setuptools>=64,<70" wheel
$PY -m pip install -q -r setup/requirements.txt
$PY -m pip install -q --no-deps --no-build-isolation -e .
$PY -c 'import torch, mmcv.ops, mmdet, mmseg, fourm; print("[setup] ok: torch", torch.__version__, "mmcv", mmcv.__version__)'
echo "[setup] done in $(( $(date +%s) - t0 ))s"
