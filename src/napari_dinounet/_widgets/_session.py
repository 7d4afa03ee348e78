"""Per-viewer state the widgets share: which backbone, device and heads are in use, and loaded backbones.

One :class:`Session` per viewer (:func:`get_session`). The Segment and Fine-tune widgets both read and
write it; when fine-tuning writes new heads it sets :attr:`Session.heads_path`, and the
:attr:`Session.heads_changed` signal tells Segment at once. No Qt here (psygnal signals only), so worker
threads may call :meth:`Session.backbone_steps` (or :meth:`Session.backbone`, the same without progress
events); torch and the engine are imported only when a backbone loads.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from psygnal import Signal

if TYPE_CHECKING:
    from ..engine.backbone import Backbone
    from ..engine.progress import ProgressGenerator


class Session:
    """What the widgets of one viewer share.

    ``heads_path``: the heads checkpoint Segment uses (``None`` until one is chosen);
    ``backbone_source``: the backbone weights (a file, a folder or ``random:<variant>``);
    ``device``: ``auto``, ``cuda``, ``mps`` or ``cpu``;
    ``allow_backbone_mismatch``: use heads with another backbone than theirs (the model form's checkbox;
    starts False in every session).
    """

    heads_changed = Signal(object)  # the new heads path (Path) or None
    backbone_changed = Signal(str, str)  # the new (backbone_source, device)
    allow_backbone_changed = Signal(bool)

    def __init__(self) -> None:
        self._heads_path: Path | None = None
        self._backbone_source = ""
        self._device = "auto"
        self._allow_backbone_mismatch = False
        # Backbones are large (up to 7B parameters), so only the one loaded last stays cached.
        self._loaded: tuple[tuple, Backbone] | None = None
        self._loading: dict[tuple, _Load] = {}  # loads in progress, by cache key
        self._lock = threading.Lock()  # guards the two above; never held while a backbone loads

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

    @property
    def allow_backbone_mismatch(self) -> bool:
        return self._allow_backbone_mismatch

    @allow_backbone_mismatch.setter
    def allow_backbone_mismatch(self, allow: bool) -> None:
        allow = bool(allow)
        if allow != self._allow_backbone_mismatch:
            self._allow_backbone_mismatch = allow
            self.allow_backbone_changed.emit(allow)

    def backbone(self, source: str | Path, device: str = "auto") -> Backbone:
        """The backbone for ``(source, device)``: :meth:`backbone_steps` without the progress events."""
        from ..engine.progress import drain

        return drain(self.backbone_steps(source, device))

    def backbone_steps(self, source: str | Path, device: str = "auto") -> ProgressGenerator[Backbone]:
        """Progress generator returning the backbone for ``(source, device)``, loaded on first use and kept.

        The cache is keyed by the weights' identity on disk (:func:`source_identity`), so a file replaced in
        place is loaded again. Loads run without the session's lock: a run that needs the cached backbone or
        another one does not wait for a load in progress; one that needs the backbone being loaded waits for
        that load and says so (the ``waiting for the backbone`` event). Slow (seconds to minutes): call it
        from a worker thread. Raises the engine's ``WeightsError`` for unusable weights and ``DinoUNetError``
        for an unavailable device.
        """
        from ..engine.backbone import load_backbone
        from ..engine.device import pick_device
        from ..engine.progress import Progress

        source = str(source).strip()
        if not source:
            from ..engine.errors import WeightsError

            raise WeightsError(
                "no backbone weights chosen: pick a DINOv3 weights file or folder in the Segment widget "
                "(or type random:tiny for an untrained test backbone)"
            )
        resolved = pick_device(device)
        key = (source, source_identity(source), str(resolved))
        with self._lock:
            if self._loaded is not None and self._loaded[0] == key:
                return self._loaded[1]
            load = self._loading.get(key)
            if load is None:
                load = self._loading[key] = _Load()
                self._loaded = None  # let the old one go before the new one takes memory
                mine = True
            else:
                mine = False
        if not mine:
            yield Progress("waiting for the backbone", 0, 1, f"{source}: another run is loading it")
            load.done.wait()
            if load.backbone is not None:
                return load.backbone
            return (yield from self.backbone_steps(source, device))  # that load failed: try it here
        try:
            yield Progress("loading the backbone", 0, 1, source)
            load.backbone = load_backbone(source, device=resolved)
            with self._lock:
                self._loaded = (key, load.backbone)
        finally:  # also when it failed, or the run was cancelled at the event above
            with self._lock:
                del self._loading[key]
            load.done.set()
        return load.backbone


class _Load:
    """A backbone load in progress: ``done`` is set when it ends; ``backbone`` is None if it failed."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.backbone: Backbone | None = None


def source_identity(source: str) -> tuple:
    """What changes when the weights at ``source`` are replaced: (device, inode, size, mtime in ns) of the file,
    or of each file directly in a folder (config.json, the safetensors and their index); () for
    ``random:<variant>`` and for a path that does not exist (loading it gives the error)."""
    path = Path(source).expanduser()
    try:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        return tuple((p.name, *_stamp(p.stat())) for p in files)
    except OSError:
        return ()


def _stamp(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


_sessions: dict[int, Session] = {}


def _unproxied(viewer):
    """The object behind napari's ``PublicOnlyProxy`` (wrapt), or ``viewer`` itself."""
    try:
        return object.__getattribute__(viewer, "__wrapped__")
    except AttributeError:
        return viewer


def get_session(viewer) -> Session:
    """The session of ``viewer``, created on first use and dropped when the viewer is.

    napari hands widgets opened with ``viewer.window.add_plugin_dock_widget`` a new ``PublicOnlyProxy`` of
    the viewer each time; the session belongs to the viewer behind it, so those widgets share one session
    with each other and with widgets opened from the menu.
    """
    viewer = _unproxied(viewer)
    key = id(viewer)
    session = _sessions.get(key)
    if session is None:
        session = _sessions[key] = Session()
        weakref.finalize(viewer, _sessions.pop, key, None)
    return session
