"""Benchmarks of the ``evf`` library: reports, not tests (no thresholds). Not installed: run from the repository root.

    python -m benchmarks.run                 # (a)-(c) below in one report (BEiT-3-Base + SAM vit_b, random weights)
    python -m benchmarks.train_step_cache    # (a) training step without / with the frozen SAM-embedding cache
    python -m benchmarks.prompt_batching     # (b) N prompts on one image: batched vs one call per prompt
    python -m benchmarks.attention_sdpa      # (c) BEiT-3 SDPA attention vs an explicit softmax reference
    python -m benchmarks.cache_speed         # (a) at the DataLoader level, modes interleaved
    python -m benchmarks.inference           # load, session, batched and bulk inference of release folders
    python -m benchmarks.load_footprint      # peak memory of loading a full-size release
    python -m benchmarks.export              # ONNX export: onnxruntime fp32 / int8 vs PyTorch on the CPU

(a)-(c) run every configuration in its own subprocess and report its peak RSS (section (d), memory);
``common.py`` holds what they share. Results: docs/benchmarks.md.
"""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check when a benchmark imports albumentations
