"""Evaluation of a trained run, one concern per module: ``metrics``, ``cam`` (Grad-CAM),
``figures`` and ``report``; ``python -m fastcifar.evaluate`` puts them together."""
