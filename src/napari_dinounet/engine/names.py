"""The names a user picks from: backbone sizes, projections, devices, tasks. No torch here.

The command line (argparse ``choices``) and the widgets (Qt combo boxes) offer these before torch is
imported, which takes seconds; the engine's registries use the same names: ``backbone.VARIANTS`` and
``network.SIZES`` are keyed by :data:`BACKBONE_SIZES`, ``projection.PROJECTIONS`` by :data:`PROJECTIONS`,
and ``device.DEVICE_CHOICES`` is :data:`DEVICES` (``tests/test_names.py`` checks that they agree).
Adding a size or a projection means adding its name here and its definition in the engine.
"""

from __future__ import annotations

# The DINOv3 ViT/16 sizes of the spec (section 1), smallest first, and "tiny" (tests/fixtures/dinov3_tiny:
# fast tests and demos). A weights file of another shape is the size "custom", never chosen by name.
BACKBONE_SIZES = ("s", "s+", "b", "l", "h+", "7b", "tiny")

# How the adapter's maps become the decoder's widths (spec section 3): "fapm" (the fidelity-aware projection
# the paper describes and the release runs; the default), "plain" (the paper's "w/o FAPM" ablation: a 1x1 conv
# per scale), "compact" (the configuration whose parameter counts equal the paper's Table IV).
PROJECTIONS = ("fapm", "plain", "compact")

# "auto": CUDA when present, else Apple MPS, else the CPU; "cuda:N" is accepted too, but not offered.
DEVICES = ("auto", "cuda", "mps", "cpu")

# What heads' classes mean (HeadsMetadata.task): "semantic" classes, or "instances" (background, interior,
# boundary, decoded into one id per object: engine/instances.py). Files that do not say are semantic.
SEMANTIC = "semantic"
INSTANCES = "instances"
TASKS = (SEMANTIC, INSTANCES)
INSTANCE_CLASS_NAMES = ("background", "interior", "boundary")  # the classes of instance heads
