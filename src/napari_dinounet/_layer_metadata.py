"""The keys of ``layer.metadata`` the plugin reads and writes (the README's "Layer metadata" section).

Torch-free and Qt-free: the reader, the sample data, the writer and the widgets all share these names.
"""

AFFINE_KEY = "affine"  # the 4x4 NIfTI voxel-to-world matrix (mm, RAS) for the axes of layer.data in their order
CLASS_NAMES_KEY = "class_names"  # class names indexed by label value
HEADS_KEY = "heads"  # on labels made by Segment: the heads checkpoint that predicted them
OBJECT_COUNT_KEY = "object_count"  # on instance labels made by Segment: how many objects they hold
