"""The speed-run recipes, as data: the fields of ``speedrun94`` (airbench94_muon),
``speedrun94_fast`` (the Hiverge cifar10-speedrun) and ``speedrun94_progressive`` (the 2026
record), each the one before with its changes, and each one's description with its
source, registered at the end of this module (use ``fastcifar.recipes.get_recipe``)."""

from __future__ import annotations

from fastcifar.recipes.recipe import Recipe, register

SPEEDRUN94 = dict(
    model="speedrun94",
    augmentation="alternating_flip_translate",
    batch_size=2000,
    epochs=8,
    optimizer="muon",
    lr=0.24,
    momentum=0.6,
    nesterov=True,
    bias_lr=0.053,
    head_lr=0.67,
    sgd_momentum=0.85,
    weight_decay=2e-6 * 2000,
    scheduler="linear",
    loss="cross_entropy",
    loss_reduction="sum",
    label_smoothing=0.2,
    drop_last=True,
    tta="flip_translate",
    whiten_images=5000,
    whiten_bias_epochs=3.0,
    compile_mode="max-autotune",
    expected_accuracy=94.01,
)
SPEEDRUN94_DOC = """Speed run to 94 %: the airbench94_muon method (94.01 % in 2.59 s on an A100).

    Follows cifar10-airbench's ``airbench94_muon.py`` (Keller Jordan), written here:
    network ``speedrun94`` (uncentred 2x2 patch whitening, dirac-initialised convolutions,
    BatchNorm weights frozen at 1 with eps 1e-12 and momentum 0.4, head weights of std 1,
    logits / 256); batch 2000 for 8 epochs (200 steps); Muon (Newton-Schulz, 3 steps,
    bfloat16; lr 0.24, momentum 0.6, Nesterov; filters renormalised each step) on the
    convolution filters and Nesterov SGD 0.85 on biases (lr 0.053) and head (0.67), weight
    decay 2e-6 x batch; summed cross-entropy with label smoothing 0.2; lr linear 1 -> 0
    without warm-up, the whitening bias trained for the first 3 epochs on its own decaying
    lr; flip alternating by epoch and 2-pixel reflect translation (``--loader gpu``); 6-view
    TTA after the last epoch; torch.compile max-autotune. The timed span is whitening +
    training + final TTA (CUDA events), as the record's. Run with --amp --compile."""

# against SPEEDRUN94
FAST = dict(
    model="speedrun94_silu",
    augmentation="alternating_flip_translate_jitter",
    batch_size=1536,
    epochs=8,
    last_epoch_fraction=0.63,
    lr=0.205,
    momentum=0.655,
    bias_lr=0.0573,
    head_lr=0.5415,
    sgd_momentum=0.825,
    weight_decay=1.0418e-6 * 1536,
    muon_weight_decay=1.0418e-6 * 1536,
    muon_ns="hiverge",
    muon_renorm_every=8,
    muon_batched=True,
    label_smoothing=0.09,
    whiten_images=960,
    whiten_bias_epochs=0.19,
    tta_fraction=0.25,
    compile_step=True,
)
FAST_DOC = """Faster speed run: the record plus the Hiverge cifar10-speedrun's improvements
    (94.01 % in 2.015-2.095 s on an A100), each a recipe field, so one flag ablates it.

    Against ``speedrun94``: SiLU in the blocks and BatchNorm momentum 0.4434 (model
    ``speedrun94_silu``); batch 1536 over 7.63 epochs (``--last-epoch-fraction 0.63``);
    Muon lr 0.205, momentum 0.655, the Hiverge Newton-Schulz coefficients (``--muon-ns``),
    one batched iteration over zero-padded filters (``--muon-batched``), filters
    renormalised every 8 steps (``--muon-renorm-every``) with decoupled weight decay
    1.04e-6 x batch (``--muon-weight-decay``); SGD 0.825 with bias lr 0.0573, head lr 0.5415;
    label smoothing 0.09; brightness +-0.14 and contrast x(1 +- 0.13) jitter
    (``--augmentation alternating_flip_translate_jitter``); whitening from 960 images with
    its bias trained for 0.19 epochs; forward + loss compiled as one graph
    (``--compile-step``); 6-view TTA only on the least-confident quarter of the test images
    (``--tta-fraction``, 0.25, as the Hiverge repository's code). Not measured on a GPU yet."""

# against FAST
PROGRESSIVE = dict(
    model="speedrun94_progressive",
    epochs=9,
    last_epoch_fraction=0.875,
    decay_epochs=8.5,
    lr_floor=0.05,
    res_schedule="24,24,24,28,28,28,32,32,32",
    lookahead_start=8,  # lookahead_every 4 and lookahead_decay 0.7: the defaults
    muon_by_shape=True,
    muon_renorm_every=2,
    muon_renorm_growth=15,
    prebuild_augmentation=True,
    lr=0.2255,
    whiten_images=5000,
    whiten_bias_epochs=0.2,
    tta_fraction=1.0,
    compile_mode="max-autotune-no-cudagraphs",
    expected_accuracy=94.0,
)
PROGRESSIVE_DOC = """The 2026 record, fulcrumresearch/cifar-10-speedrun's E1 (``fable-100m/recipes/
    e1_1.74s_single-gpu_CHAMPION.py``; 94 % in 1.828 s on an A100 under its harness, their
    figure). Against ``speedrun94_fast``, each a field: 24/28/32 px by epoch inside the step
    (``--res-schedule``), a global max pool (model ``speedrun94_progressive``), 8.875 epochs
    decaying over 8.5 to an lr floor of 0.05, lookahead averaging (8 steps before the
    decay's end, every 4, 0.7), Muon lr 0.2255 batched by filter shape and renormalised
    every 2 + int(15 x step / decay steps) steps, whitening from 5,000 images (bias 0.2
    epochs), every epoch's augmentation built before training, 6-view TTA on all test
    images, max-autotune without CUDA graphs. Not built: the whole run as one CUDA graph
    (its authors measured it at about 5 ms over per-step graphs; docs/DESIGN.md)."""


# each the one before with its changes
_speedrun = register(Recipe(name="speedrun94", **SPEEDRUN94), SPEEDRUN94_DOC)
_speedrun = register(_speedrun.replace(name="speedrun94_fast", **FAST), FAST_DOC)
register(_speedrun.replace(name="speedrun94_progressive", **PROGRESSIVE), PROGRESSIVE_DOC)
