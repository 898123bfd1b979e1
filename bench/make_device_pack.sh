#!/usr/bin/env bash
# Builds bench/pack/ (git-ignored), what bench/device_run.sh needs on a GPU machine that reaches
# no package registry and no ../shared/data:
#   site.tar.xz  the engine's packages that the machine's image lacks (SimpleITK, MONAI, pynrrd,
#                slicerio), installed from manylinux wheels for CPython 3.12 and packed with xz
#                (SimpleITK's wheel alone is 53 MB; xz brings the four to about 30 MB);
#   data.tar.xz  the bench's data at the CPU preset spacing (bench/data_pack.py, about 24 MB).
# The two stay under the 64 MiB that may travel with the repository. Run from the repo root:
#   bash bench/make_device_pack.sh [PYTHON]
set -euo pipefail
PYTHON=${1:-.venv/bin/python}
PACK=bench/pack
mkdir -p "$PACK"
WHEELS=$(mktemp -d); SITE=$(mktemp -d)
trap 'rm -rf "$WHEELS" "$SITE"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" simpleitk==2.5.7 monai==1.6.1 pynrrd==1.1.3 slicerio==1.4.0
python3 -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl
# The machine's own torch, numpy, scipy, requests... serve; nothing else may shadow them.
ls "$SITE"
tar -C "$SITE" -cf - . | xz -T2 -9 > "$PACK/site.tar.xz.tmp" && mv "$PACK/site.tar.xz.tmp" "$PACK/site.tar.xz"
[ -f "$PACK/data.tar.xz" ] || PYTHONPATH=$PWD OMP_NUM_THREADS=1 "$PYTHON" bench/data_pack.py build --out "$PACK"
du -b "$PACK"/*
