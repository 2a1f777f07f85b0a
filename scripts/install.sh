#!/usr/bin/env bash
# One install path for the README, CI and clusters. Order matters (see docs/install.md):
# sam2 compiles against the torch already installed, so torch goes in first and the
# project is installed without build isolation (isolation would download another torch).
set -euo pipefail
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q -U pip "setuptools>=68" wheel
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
SAM2_BUILD_CUDA=0 DS_BUILD_OPS=0 python -m pip install -q --no-build-isolation -e ".[dev]"
