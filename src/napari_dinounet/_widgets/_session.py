"""Per-viewer state the widgets share: which backbone, device and heads are in use, and loaded backbones.

One :class:`Session` per viewer (:func:`get_session`). The Segment and Fine-tune widgets both read and
write it; when fine-tuning writes new heads it sets :attr:`Session.heads_path`, and the
:attr:`Session.heads_changed` signal tells Segment at once. No Qt here (psygnal signals only), so worker
threads may call :meth:`Session.backbone`; torch and the engine are imported only when a backbone loads.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from psygnal import Signal

if TYPE_CHECKING:
    from ..engine.backbone import Backbone


class Session:
    """What the widgets of one viewer share.

    ``heads_path``: the heads checkpoint Segment uses (``None`` until one is chosen);
    ``backbone_source``: the backbone weights (a file, a folder or ``random:<variant>``);
    ``device``: ``auto``, ``cuda``, ``mps`` or ``cpu``.
    """

    heads_changed = Signal(object)  # the new heads path (Path) or None
    backbone_changed = Signal(str, str)  # the new (backbone_source, device)

    def __init__(self) -> None:
        self._heads_path: Path | None = None
        self._backbone_source = ""
        self._device = "auto"
        # Backbones are large (up to 7B parameters), so only the one used last stays loaded.
        self._loaded: tuple[tuple[str, str], Backbone] | None = None
        self._load_lock = threading.Lock()

    @property
    def heads_path(self) -> Path | None:
        return self._heads_path

    @heads_path.setter
    def heads_path(self, path: str | Path | None) -> None:
        path = Path(path) if path else None
        if path != self._heads_path:
            self._heads_path = path
            self.heads_changed.emit(path)

    @property
    def backbone_source(self) -> str:
        return self._backbone_source

    @backbone_source.setter
    def backbone_source(self, source: str | Path) -> None:
        source = str(source).strip()
        if source != self._backbone_source:
            self._backbone_source = source
            self.backbone_changed.emit(source, self._device)

    @property
    def device(self) -> str:
        return self._device

    @device.setter
    def device(self, device: str) -> None:
        if device != self._device:
            self._device = device
            self.backbone_changed.emit(self._backbone_source, device)

    def backbone(self, source: str | Path, device: str = "auto") -> Backbone:
        """The backbone for ``(source, device)``, loaded on first use and kept for the next runs.

        Slow (seconds to minutes): call it from a worker thread. Raises the engine's
        ``WeightsError`` for unusable weights and ``DinoUNetError`` for an unavailable device.
        """
        from ..engine.backbone import load_backbone
        from ..engine.device import pick_device

        source = str(source).strip()
        if not source:
            from ..engine.errors import WeightsError

            raise WeightsError(
                "no backbone weights chosen: pick a DINOv3 weights file or folder in the Segment widget "
                "(or type random:tiny for an untrained test backbone)"
            )
        resolved = pick_device(device)
        key = (source, str(resolved))
        with self._load_lock:
            if self._loaded is None or self._loaded[0] != key:
                self._loaded = None  # let the old one go before the new one takes memory
                self._loaded = (key, load_backbone(source, device=resolved))
            return self._loaded[1]


_sessions: dict[int, Session] = {}


def get_session(viewer) -> Session:
    """The session of ``viewer``, created on first use and dropped when the viewer is."""
    key = id(viewer)
    session = _sessions.get(key)
    if session is None:
        session = _sessions[key] = Session()
        weakref.finalize(viewer, _sessions.pop, key, None)
    return session
