"""Random tiny heads with a full description, for tests of prediction that need heads but no training."""

from __future__ import annotations


def random_heads(backbone, num_classes: int = 3, seed: int = 0):
    """(model, HeadsMetadata): untrained tiny heads on ``backbone`` for 1-channel images, 64-pixel patches,
    z-score normalisation, classes "background", "a", "b", ..."""
    import torch

    from napari_dinounet.engine.checkpoint import HeadsMetadata
    from napari_dinounet.engine.network import build_dinounet

    torch.manual_seed(seed)
    model = build_dinounet(num_classes=num_classes, backbone=backbone)
    metadata = HeadsMetadata(
        config=model.config.to_dict(),
        class_names=["background", *"abcdefghijklmnopqrstuvwxyz"[: num_classes - 1]],
        in_channels=1,
        normalization={"scheme": "zscore"},
        patch_size=64,
        backbone_variant="tiny",
    )
    return model, metadata
