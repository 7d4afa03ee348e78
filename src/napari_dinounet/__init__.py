"""napari-dinounet: Dino U-Net segmentation (frozen DINOv3 + trainable heads) for napari.

Importing the package is cheap: torch, timm and Qt are imported by the modules that need them.
The engine (``napari_dinounet.engine``) is usable without napari; the widgets live in ``_widgets``.
"""

__version__ = "0.1.0"
