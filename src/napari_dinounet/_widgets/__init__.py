"""The napari dock widgets: Segment, Fine-tune and Export (one module each, opened from the manifest).

Kept empty on purpose: napari imports a widget's module only when the user opens it, and torch/timm are
imported there (or later), never when napari starts.
"""
