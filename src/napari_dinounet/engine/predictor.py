"""A :class:`Predictor`: trained heads on their backbone, built once, segmenting any number of images.

It holds the network, the checkpoint's :class:`~.checkpoint.HeadsMetadata` and the checks every caller
needs (the backbone the heads were trained with, the image's channels, the training patch as the tile, the
stored normalisation), so that the CLI, the Segment widget and Python users share one
load-check-predict chain. What comes out is chosen by ``outputs`` (:mod:`.outputs`).

    predictor = Predictor.from_checkpoint("heads.safetensors", "dinov3_vits16.pth", device="auto")
    labels, probabilities = drain(predictor.predict(image, outputs=(Labels(), Probabilities())))
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from pathlib import Path

import torch

from .backbone import Backbone, load_backbone
from .checkpoint import HeadsMetadata, load_heads, read_metadata
from .device import pick_device
from .errors import InputError
from .instances import Instances
from .names import INSTANCES
from .network import DinoUNet
from .outputs import Labels, Output
from .predict import Region, image_layout, sliding_window
from .progress import Progress


class Predictor:
    """Heads on a backbone (eval mode), with their description.

    model: the DinoUNet; metadata: its HeadsMetadata; path: the checkpoint it came from (None when built
    from a model in memory). The model stays where it is (``device``): :meth:`predict` never moves it.
    """

    def __init__(self, model: DinoUNet, metadata: HeadsMetadata, path: Path | None = None):
        self.model = model.eval()
        self.metadata = metadata
        self.path = path

    @classmethod
    def from_checkpoint(
        cls,
        heads: str | Path,
        backbone: Backbone | str | Path,
        *,
        device: str | torch.device | None = None,
        allow_backbone_mismatch: bool = False,
    ) -> Predictor:
        """Load a heads checkpoint onto ``backbone``.

        heads: the heads ``.safetensors`` file. backbone: a loaded :class:`~.backbone.Backbone` (e.g. one a
        widget session keeps), or its weights source for :func:`~.backbone.load_backbone` (a file, a
        Hugging Face folder, ``random:<variant>``). device: ``auto``, ``cuda``, ``mps``, ``cpu`` or a
        torch.device; default: a loaded backbone's device, ``auto`` for a source.
        The heads' description is read (and checked) before a backbone source loads, which can take
        minutes. The backbone must be the one the heads were trained with (variant, weights hash, head
        count), else a CheckpointError naming both, unless ``allow_backbone_mismatch`` (then a warning).
        """
        heads = Path(heads)
        if not isinstance(backbone, Backbone):
            read_metadata(heads)  # a missing or damaged heads file is found out before the slow part
            backbone = load_backbone(backbone, device=pick_device("auto" if device is None else device))
            device = None
        elif device is not None:
            device = pick_device(device)
        model, metadata = load_heads(heads, backbone, allow_backbone_mismatch=allow_backbone_mismatch, device=device)
        return cls(model, metadata, heads)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata.class_names)

    def default_output(self) -> Output:
        """What these heads give by default: class :class:`~.outputs.Labels`, or for instance heads
        (``metadata.task == "instances"``) instance labels (:class:`~.instances.Instances`, default parameters)."""
        if self.metadata.task == INSTANCES:
            return Instances()
        return Labels()

    def check_channels(self, count: int) -> None:
        """An InputError naming the fix unless an image of ``count`` channels is what the heads were trained on
        (not checked when the checkpoint does not say)."""
        expected = self.metadata.in_channels
        if expected and count != expected:
            raise InputError(
                f"the heads were trained on {expected}-channel images but this image has {count}: give images like "
                "the training ones, and say which axis holds their channels (channel_axis=N; --channel-axis N in "
                f"the CLI; in Segment, the Channel axis and Channels fields pick {expected})"
            )

    def predict(
        self,
        image,
        *,
        channel_axis: int | None = None,
        slice_axis: int | None = None,
        step: float = 0.5,
        tile: int | tuple[int, int] | None = None,
        mirror: bool = False,
        batch_size: int = 4,
        force: bool = False,
        outputs: Sequence[Output] | None = None,
        slices: Sequence[int] | None = None,
        region: Region | None = None,
        shared_backbone: bool = False,
    ) -> Generator[Progress, None, tuple]:
        """Segment ``image``: yields ``Progress(task="predict")`` per tile batch and returns one result per
        output, in the order of ``outputs`` (default: a 1-tuple of :meth:`default_output`'s labels).

        image, channel_axis, slice_axis, step, batch_size, force, shared_backbone: as :func:`~.predict.predict`
        takes them.
        tile: the tile (int or (th, tw)); default the training patch. mirror: mirror test-time augmentation.
        slices: only these slices of a stack (:func:`~.predict.sliding_window`).
        The image's channels (RGBA counts as 3) must be the ``in_channels`` the heads were trained on; the
        checkpoint's normalisation is applied. Equal, bit for bit, to ``predict(self.model, image,
        patch_size=tile or metadata.patch_size, normalization=metadata.normalization, ...)``.
        region: predict only ``((y0, y1), (x0, x1))`` of each plane (half-open pixel ranges; for a stack also
        ``((z0, z1), (y0, y1), (x0, x1))`` in its spatial axes' order, to pick slices); the results then
        have the region's shape. Only the whole-image tiles that overlap the region run (with the whole
        image's statistics), so inside it the results equal a whole-image run's, up to float rounding.
        """
        outputs = (self.default_output(),) if outputs is None else tuple(outputs)
        layout = image_layout(image, channel_axis, slice_axis)
        self.check_channels(layout.num_channels)
        return (
            yield from sliding_window(
                self.model,
                image,
                layout,
                outputs,
                patch_size=self.metadata.patch_size if tile is None else tile,
                step=step,
                mirror=mirror,
                batch_size=batch_size,
                normalization=self.metadata.normalization,
                force=force,
                slices=slices,
                region=region,
                shared_backbone=shared_backbone,
            )
        )
