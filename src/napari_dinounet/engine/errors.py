"""Errors shown to users: each message names the problem and the fix."""


class DinoUNetError(Exception):
    """Base class for every error a user can cause and fix (bad file, bad input, bad option)."""


class WeightsError(DinoUNetError):
    """A backbone weights file or folder cannot be used (missing, corrupt, unsafe, wrong network)."""


class CheckpointError(DinoUNetError):
    """A heads checkpoint cannot be used (corrupt, or made for another backbone or configuration)."""


class InputError(DinoUNetError):
    """An image or label array cannot be used as given (shape, channels, classes, values)."""


class OutputError(InputError):
    """An output path cannot be written (no permission, a file in the way, a full disk, a folder)."""


class TrainingError(DinoUNetError):
    """Training cannot go on (the loss or the weights became NaN or infinite)."""
