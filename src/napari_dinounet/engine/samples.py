"""The old name of :mod:`.bundled_data` ("samples" in the engine are training samples), kept while tests and
benchmarks still import it from here."""

from .bundled_data import MNI152Slices, load_mni152_slices, load_nuclei

__all__ = ["MNI152Slices", "load_mni152_slices", "load_nuclei"]
