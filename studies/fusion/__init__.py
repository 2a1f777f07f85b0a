"""The miniature fusion study (README.md here): does early fusion beat text-only prompts at CPU scale?

    python -m studies.fusion.pretrain --out weights/mini     # miniature pre-training of the tiny SAM-1 and encoders
    evf sweep "experiments/mini/*.yaml" --base experiments/mini_base.yaml --seeds 0 1 2 --out results/mini
    python -m studies.fusion.box_oracle --steps 600          # what any encoder can reach through the tiny SAM
    python -m studies.fusion.grounding_curve --out /tmp/beit3_grounded.pth
    OUT=/tmp/explore python -m studies.fusion.exploration    # the pre-training variants explored once

Uses the library only through its public API (``evf.encoders``, ``evf.sam``, ``evf.model``, ``evf.optim``, ...)
and the ``datamodules`` package for its synthetic scenes.
"""
