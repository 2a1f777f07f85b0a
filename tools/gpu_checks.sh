#!/bin/bash
# The checks that need a CUDA GPU, as one script (docs/gpu.md): tests/test_gpu.py, then the video benchmark at
# full size (BEiT-3-L + SAM-2 Hiera-L, random weights). Run from the repo root on a machine with evf's
# dependencies; EVF_GPU_LOG (default: the current folder) receives the logs.
set -o pipefail
log=${EVF_GPU_LOG:-.}
mkdir -p "$log"
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$log/gpu.txt"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'lightning', lightning.__version__)" | tee -a "$log/gpu.txt"
timeout "${EVF_GPU_TEST_TIMEOUT:-300}" python3 -m pytest tests/test_gpu.py -n 0 -p no:cacheprovider -rA --durations=0 2>&1 | tee "$log/test_gpu.log"
status=$?
timeout "${EVF_GPU_BENCH_TIMEOUT:-240}" python3 -m benchmarks.video --device cuda --encoder large --variant large \
    --size 480x854 --frames 32,96 --objects 3 --threads 8 2>&1 | tee "$log/video_bench.log"
exit $status
