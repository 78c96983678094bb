"""The roofline of a training step: FLOPs and bytes moved per layer along the eager,
torch.compile and fastcifar paths (``count``), the byte rules per operator
(``traffic``), the kinds of layer (``kinds``), the GPUs' peaks (``gpus``), the figure
(``figure``) and the command (``python -m fastcifar.roofline``)."""
