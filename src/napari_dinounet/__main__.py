"""``python -m napari_dinounet`` is the ``dinounet`` command."""

import sys

from .cli import main

sys.exit(main())
