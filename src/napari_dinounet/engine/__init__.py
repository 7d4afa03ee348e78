"""The Dino U-Net engine: model, weights, data, training, prediction and metrics.

Pure PyTorch / NumPy: nothing here imports Qt or napari, so the CLI, Python users and the widgets share it.
Long work (prediction, training) is written as generators that yield :class:`~.progress.Progress`
events and return their result; see :mod:`.progress`.
"""
