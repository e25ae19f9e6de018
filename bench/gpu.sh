#!/usr/bin/env bash
# Prove every CUDA path in one short run (bench/gpu.py); its last stdout line is the JSON result.
#
#   bash bench/gpu.sh                  # on a machine with a CUDA GPU: at most about 8 minutes
#   bash bench/gpu.sh --reduced        # anywhere, tiny sizes (a CPU allowed): checks the script itself
#   bash bench/gpu.sh --fetch-wheels   # on a machine with a package registry: puts in .whl/ the wheels
#                                      # (Python 3.12, x86-64) that a bare GPU image lacks
#
# It installs nothing it cannot reach: missing packages come from .whl/ when it is there, into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
WHEELS="facenet-pytorch==2.5.3 albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 simsimd==6.5.16 stringzilla==5.3.2"
NEEDS="torch torchvision timm facenet_pytorch albumentations cv2 sklearn skimage pandas typer tensorboard
       matplotlib tqdm"

if [ "${1:-}" = --fetch-wheels ]; then
  python3 -m pip download --no-deps --only-binary=:all: --python-version "${2:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $WHEELS || exit 1
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  echo "wheels in .whl/ ($(du -sh .whl | cut -f1)); run bench/gpu.sh there with .whl carried along"
  exit 0
fi

PY=python3
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then PY=.venv/bin/python; fi
missing() {
  $PY -c 'import importlib.util, sys; print(" ".join(n for n in sys.argv[1:] if importlib.util.find_spec(n) is None))' \
    $NEEDS
}
if [ -n "$(missing)" ] && compgen -G '.whl/*.whl' >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
gone=$(missing)
if [ -n "$gone" ]; then
  echo "error: missing Python packages: $gone (bash bench/gpu.sh --fetch-wheels where a registry is reachable," \
       "then bring .whl/ along)" >&2
  exit 2
fi
exec timeout 570 $PY bench/gpu.py "$@"
