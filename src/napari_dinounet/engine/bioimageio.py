"""bioimage.io model packages (spec 0.5): export trained heads with their backbone, load such a package back.

Optional: needs the ``bioimageio`` extra (``pip install "napari-dinounet[bioimageio]"``: bioimageio.spec and
bioimageio.core).

:func:`export_package` writes one zip (``bioimageio.spec.save_bioimageio_package``) holding:

- ``weights.pt``: the ``pytorch_state_dict`` of the WHOLE network, frozen DINOv3 backbone included (the zoo
  cannot fetch hub weights), as :class:`ZooDinoUNet` holds it; the architecture is imported from this package
  (``ArchitectureFromLibraryDescr``: ``napari_dinounet.engine.bioimageio.ZooDinoUNet`` with the backbone
  variant and the network config as kwargs), so the zoo's tools need ``napari-dinounet`` installed.
- input ``raw`` (batch, channel, y, x), float32 image values; pre-processing ``zero_mean_unit_variance``
  over y and x per channel (``zscore``; ``rgb``: over channels too), as our prediction normalises with the
  whole image's statistics; y and x any multiple of 32 from 64. Output ``probabilities`` (batch, class, y, x):
  the softmax of the logits, classes named after the heads' classes; their argmax is the label map.
- a test input (a crop of the image given, one training patch) and the output this network gives it; a
  cover (the test input beside its labels); ``LICENSE.md`` (the DINOv3 License Agreement governs the
  backbone weights inside: recorded as the package's licence file, to be read before any upload) and
  ``README.md`` (classes, normalisation, the checkpoint's training summary).

The zoo runs the network once over the whole input; our prediction tiles it. On one tile the two agree
(tests/engine/test_bioimageio.py); on larger images they differ where tiles blend.
:func:`load_package` rebuilds the network from a package for ``dinounet predict --model``.
"""

from __future__ import annotations

import json
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import InputError

EXTRA = 'pip install "napari-dinounet[bioimageio]"'
MIN_SIZE, SIZE_STEP = 64, 32
DINOV3_LICENSE_URL = "https://ai.meta.com/resources/models-and-libraries/dinov3-license/"


class ZooDinoUNet(nn.Module):
    """The network a bioimage.io package describes: a :class:`~.network.DinoUNet` on a ``variant`` backbone
    (built with random weights, which the package's state dict replaces), returning class probabilities.

    variant: a backbone variant name (``tiny``, ``s``, ``b``, ...); config: ``DinoUNetConfig.to_dict()``;
    network: a DinoUNet to wrap as it is (exporting), instead of building one.
    forward: normalised x (B, C, H, W) -> softmax probabilities (B, nc, H, W).
    """

    def __init__(self, variant: str, config: dict, network: nn.Module | None = None):
        super().__init__()
        if network is None:
            from .backbone import load_backbone
            from .network import DinoUNet, DinoUNetConfig

            with warnings.catch_warnings():  # the random backbone's warning: its weights come from the package
                warnings.simplefilter("ignore", UserWarning)
                backbone = load_backbone(f"random:{variant}")
            network = DinoUNet(DinoUNetConfig.from_dict(config), backbone)
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(x), dim=1)


def check_environment() -> None:
    """An InputError naming the fix unless bioimageio.spec is installed and works with this pydantic.

    bioimageio.core 0.11 (the newest) pins bioimageio.spec 0.5.12, whose serializers call pydantic's handler
    the pre-2.14 way: under pydantic 2.14 every description with a file fails to build ("'index_key' is
    expected to be an integer or a string"); bioimageio.spec 0.5.14 fixed it, but no bioimageio.core allows
    it. Measured: pydantic 2.12.5 works, 2.14.4 does not.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        spec, pydantic = version("bioimageio.spec"), version("pydantic")
    except PackageNotFoundError:
        raise InputError(f"bioimage.io packages need bioimageio.spec and bioimageio.core: {EXTRA}") from None
    numbers = [tuple(int(p) for p in v.split(".")[:3] if p.isdigit()) for v in (spec, pydantic)]
    if numbers[0] < (0, 5, 14) and numbers[1] >= (2, 14):
        raise InputError(
            f"bioimageio.spec {spec} (the one bioimageio.core pins) does not work with pydantic {pydantic}: "
            'install pydantic below 2.14 (pip install "pydantic<2.14"; 2.12.5 works), or a bioimageio.core that '
            "allows bioimageio.spec 0.5.14"
        )


def _spec():
    check_environment()
    from bioimageio.spec.model import v0_5

    return v0_5


def _preprocessing(v0_5, scheme: str):
    axes = {"zscore": ["y", "x"], "rgb": ["channel", "y", "x"]}.get(scheme)
    if axes is None:
        raise InputError(
            f"the heads use the {scheme!r} normalisation, which bioimage.io's pre-processing does not express "
            "here: export heads trained with zscore or rgb normalisation"
        )
    return [
        v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
        v0_5.ZeroMeanUnitVarianceDescr(
            kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=[v0_5.AxisId(a) for a in axes], eps=1e-6)
        ),
    ]


def _license_text(predictor) -> str:
    variant = predictor.metadata.backbone_variant
    random_backbone = predictor.metadata.backbone_sha256 is None
    lines = [
        "# Licence",
        "",
        "The weights in this package include the frozen DINOv3 backbone (Meta Platforms, Inc.), distributed",
        f"under the DINOv3 License Agreement: {DINOV3_LICENSE_URL}. Its terms govern any use or redistribution",
        "of these weights: read them before sharing this package or uploading it to the bioimage.io model zoo.",
        "",
        "The trained heads (adapter, FAPM projection, U-Net decoder) were made with napari-dinounet (BSD-3-Clause).",
    ]
    if random_backbone:
        lines += ["", f"This package was exported with a RANDOM {variant} backbone (no DINOv3 weights): a test model."]
    return "\n".join(lines) + "\n"


def _readme(predictor, scheme: str, source: str) -> str:
    meta = predictor.metadata
    classes = "\n".join(f"- {i}: {name}" for i, name in enumerate(meta.class_names))
    training = json.dumps(meta.training, indent=2, default=str) if meta.training else "{}"
    return f"""# Dino U-Net segmentation ({", ".join(meta.class_names[1:]) or "classes"})

A Dino U-Net (frozen DINOv3 ViT backbone `{meta.backbone_variant}`, trainable adapter, FAPM projection and
U-Net decoder) exported by napari-dinounet from `{source}`.

## Input and output
- input `raw`: (batch, channel, y, x), {meta.in_channels or "any number of"} channel(s), y and x multiples of
  {SIZE_STEP} from {MIN_SIZE}; normalised by the package's pre-processing ({scheme}: zero mean, unit variance
  over the whole image{", per channel" if scheme == "zscore" else ""}).
- output `probabilities`: (batch, class, y, x), softmax over the classes; the label of a pixel is the argmax.

Classes:
{classes}

The zoo runs the network over the whole input at once; napari-dinounet's own prediction tiles large images
(tile {meta.patch_size}, Gaussian blending) and gives the same labels on one tile.

## Training summary
```json
{training}
```

## Licence
See LICENSE.md: the DINOv3 License Agreement governs the backbone weights inside.
"""


def _cover(image: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """A 2:1 PNG: the (first channel of the) test input beside its labels."""
    from PIL import Image

    plane = image[0].astype(np.float64)
    low, high = np.percentile(plane, (1, 99))
    gray = np.clip((plane - low) / max(high - low, 1e-9) * 255, 0, 255).astype(np.uint8)
    palette = np.array([[0, 0, 0], [255, 0, 255], [0, 200, 255], [255, 200, 0], [0, 255, 100]], np.uint8)
    colours = palette[labels % len(palette)]
    both = np.concatenate([np.repeat(gray[..., None], 3, axis=2), colours], axis=1)
    Image.fromarray(both).resize((512, 256), Image.NEAREST).save(path)


def test_tile(image: np.ndarray, channel_axis: int | None, size: int) -> np.ndarray:
    """A (C, size, size) float32 crop from the middle of ``image`` (2D, channels at ``channel_axis``)."""
    array = np.asarray(image)
    array = array[None] if channel_axis is None else np.moveaxis(array, channel_axis, 0)
    if array.ndim != 3 or min(array.shape[1:]) < size:
        raise InputError(
            f"the test image must be 2D and at least {size} x {size} pixels (one training patch); got shape "
            f"{np.asarray(image).shape}"
        )
    top, left = (array.shape[1] - size) // 2, (array.shape[2] - size) // 2
    return np.ascontiguousarray(array[:, top : top + size, left : left + size], dtype=np.float32)


def export_package(
    predictor,
    out: str | Path,
    test_image: np.ndarray,
    *,
    channel_axis: int | None = None,
    name: str | None = None,
    authors: list[str] | None = None,
) -> Path:
    """Write ``predictor``'s network as a bioimage.io model zip at ``out`` (see the module notes); return it.

    predictor: a :class:`~.predictor.Predictor` (heads on their backbone). test_image: a 2D image like the
    training ones (channels at ``channel_axis``), cropped in the middle to one training patch (at least
    :data:`MIN_SIZE`) for the package's test tensors. An existing ``out`` is replaced only by a complete
    package (written beside it, then renamed).
    """
    from .atomic import atomic_path
    from .normalize import apply, image_statistics

    v0_5 = _spec()
    from bioimageio.spec import save_bioimageio_package

    meta = predictor.metadata
    patch = meta.patch_size if isinstance(meta.patch_size, int) else min(meta.patch_size or (MIN_SIZE,))
    size = max(MIN_SIZE, -(-(patch or MIN_SIZE) // SIZE_STEP) * SIZE_STEP)
    raw = test_tile(test_image, channel_axis, size)
    predictor.check_channels(raw.shape[0])
    scheme = meta.normalization.get("scheme", "zscore")
    preprocessing = _preprocessing(v0_5, scheme)
    variant = meta.backbone_variant or predictor.model.backbone.variant
    if not variant:
        raise InputError("the backbone is not one of the named DINOv3 variants: only those can be exported")
    zoo = ZooDinoUNet(variant, meta.config, network=predictor.model).eval()
    from .normalize import Normalization

    stats = image_statistics(raw, "rgb" if scheme == "rgb" else "zscore")
    normalised = apply(raw, Normalization(scheme), stats)
    with torch.no_grad():
        device = predictor.device
        probabilities = zoo(torch.from_numpy(normalised[None]).to(device)).float().cpu().numpy()
    labels = probabilities[0].argmax(axis=0)

    with tempfile.TemporaryDirectory(prefix="dinounet-bioimageio-") as folder:
        folder = Path(folder)
        weights = folder / "weights.pt"
        torch.save({k: v.detach().cpu() for k, v in zoo.state_dict().items()}, weights)
        np.save(folder / "test_input.npy", raw[None])
        np.save(folder / "test_output.npy", probabilities)
        _cover(raw, labels, folder / "cover.png")
        (folder / "LICENSE.md").write_text(_license_text(predictor))
        source = predictor.path.name if predictor.path is not None else "heads in memory"
        (folder / "README.md").write_text(_readme(predictor, scheme, source))
        spatial_in = [
            v0_5.SpaceInputAxis(id=v0_5.AxisId(a), size=v0_5.ParameterizedSize(min=MIN_SIZE, step=SIZE_STEP))
            for a in "yx"
        ]
        spatial_out = [
            v0_5.SpaceOutputAxis(
                id=v0_5.AxisId(a), size=v0_5.SizeReference(tensor_id=v0_5.TensorId("raw"), axis_id=v0_5.AxisId(a))
            )
            for a in "yx"
        ]
        channel_names = [v0_5.Identifier(f"channel{i}") for i in range(raw.shape[0])]
        class_names = [v0_5.Identifier(_identifier(n, i)) for i, n in enumerate(meta.class_names)]
        from napari_dinounet import __version__

        descr = v0_5.ModelDescr(
            name=name or f"Dino U-Net {' '.join(meta.class_names[1:])}".strip(),
            description="Semantic segmentation with a frozen DINOv3 ViT backbone and trained Dino U-Net heads "
            "(napari-dinounet).",
            authors=[v0_5.Author(name=a) for a in (authors or ["napari-dinounet user"])],
            cite=[
                v0_5.CiteEntry(text="Gao et al., Dino U-Net (2025)", url="https://github.com/yifangao112/DinoUNet"),
                v0_5.CiteEntry(text="Siméoni et al., DINOv3 (2025)", url="https://ai.meta.com/dinov3/"),
            ],
            license=v0_5.FileDescr(source=folder / "LICENSE.md"),
            documentation=v0_5.FileDescr(source=folder / "README.md"),
            covers=[v0_5.FileDescr(source=folder / "cover.png")],
            tags=["segmentation", "semantic-segmentation", "dinov3", "dino-unet", "napari-dinounet", "2d"],
            inputs=[
                v0_5.InputTensorDescr(
                    id=v0_5.TensorId("raw"),
                    axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=channel_names), *spatial_in],
                    test_tensor=v0_5.FileDescr(source=folder / "test_input.npy"),
                    data=v0_5.IntervalOrRatioDataDescr(type="float32"),
                    preprocessing=preprocessing,
                )
            ],
            outputs=[
                v0_5.OutputTensorDescr(
                    id=v0_5.TensorId("probabilities"),
                    axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=class_names), *spatial_out],
                    test_tensor=v0_5.FileDescr(source=folder / "test_output.npy"),
                    data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
                )
            ],
            weights=v0_5.WeightsDescr(
                pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
                    source=weights,
                    architecture=v0_5.ArchitectureFromLibraryDescr(
                        import_from="napari_dinounet.engine.bioimageio",
                        callable=v0_5.Identifier("ZooDinoUNet"),
                        kwargs={"variant": variant, "config": meta.config},
                    ),
                    pytorch_version=v0_5.Version(torch.__version__.split("+")[0]),
                    comment=f"napari-dinounet {__version__}; backbone {variant}, DINOv3 License Agreement",
                )
            ),
            config={"napari-dinounet": {"heads": json.loads(meta.to_json())}},
        )
        out = Path(out)
        with atomic_path(out) as tmp:
            save_bioimageio_package(descr, output_path=tmp)
    return out


def _identifier(name: str, index: int) -> str:
    text = "".join(c if c.isalnum() or c in "_-" else "_" for c in name).strip("_-")
    return text if text and text[0].isalpha() else f"class{index}"


def is_package(path: str | Path) -> bool:
    """A zip holding a bioimage.io description (``rdf.yaml`` or ``bioimageio.yaml``)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith(("rdf.yaml", "bioimageio.yaml")) for n in archive.namelist())


def load_package(path: str | Path, device: str | torch.device | None = None):
    """A :class:`~.predictor.Predictor` for a package :func:`export_package` wrote: the network rebuilt from
    its kwargs, the whole state dict loaded (``weights_only``), the heads' description from its config."""
    _spec()
    from bioimageio.spec import load_model_description

    from .checkpoint import HeadsMetadata
    from .device import pick_device
    from .predictor import Predictor

    descr = load_model_description(str(path), perform_io_checks=False)
    if getattr(descr, "type", None) != "model" or not hasattr(descr, "weights"):
        raise InputError(f"{path}: not a valid bioimage.io model package ({getattr(descr, 'validation_summary', '')})")
    ours = (descr.config.model_dump() if hasattr(descr.config, "model_dump") else dict(descr.config)).get(
        "napari-dinounet"
    )
    entry = descr.weights.pytorch_state_dict
    if not ours or entry is None or entry.architecture.callable != "ZooDinoUNet":
        raise InputError(
            f"{path}: a bioimage.io model not exported by napari-dinounet; run it with bioimageio.core instead"
        )
    metadata = HeadsMetadata.from_json(json.dumps(ours["heads"]), Path(path))
    zoo = ZooDinoUNet(**entry.architecture.kwargs)
    with zipfile.ZipFile(path) as archive, archive.open(Path(str(entry.source)).name) as file:
        state = torch.load(file, map_location="cpu", weights_only=True)
    zoo.load_state_dict(state)
    model = zoo.network.to(pick_device("auto" if device is None else device))
    return Predictor(model, metadata, Path(path))
