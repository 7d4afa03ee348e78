"""Open napari with a sample of this plugin and its Segment, Fine-tune and Export widgets docked.

The README's first command, ``bash tools/napari.sh``, sets up ``.venv`` and runs this file. Directly:

    .venv/bin/python tools/open_napari.py [--sample nuclei|mni152]

``--screenshot PATH`` opens the same window, docks the widgets, waits until the window is drawn, saves a
full-window PNG to PATH, writes what it showed (docked widgets, layers, window size) to PATH with a
``.json`` suffix, and quits with status 0. Headless, under Xvfb:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python tools/open_napari.py --screenshot napari.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

PLUGIN = "napari-dinounet"
WIDGETS = ("Segment", "Fine-tune", "Export")  # display names in src/napari_dinounet/napari.yaml
SAMPLES = ("nuclei", "mni152")  # sample keys in the same manifest
WINDOW = (1600, 1000)  # the screenshot's window size (the test's Xvfb screen)
DOCK_WIDTH = 520  # the docks' width: the canvas keeps the rest (Qt keeps each widget's minimum width)


def process_events(seconds: float) -> None:
    """Let Qt lay out and paint for ``seconds``."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def open_viewer(sample: str, size: tuple[int, int] | None = None):
    """A napari viewer with ``sample`` open and the plugin's widgets docked; returns (viewer, {name: widget})."""
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-dinounet")
    if size is not None:
        viewer.window.resize(*size)
    viewer.open_sample(PLUGIN, sample)
    docked = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name) for name in WIDGETS}
    widgets = {name: widget for name, (_, widget) in docked.items()}
    docks = [dock for dock, _ in docked.values()]
    process_events(0.3)  # docks can be resized once they are laid out
    window = viewer.window._qt_window
    height = size[1] if size else QApplication.primaryScreen().availableGeometry().height()
    chrome = window.menuBar().sizeHint().height() + window.statusBar().sizeHint().height()
    if sum(dock.minimumSizeHint().height() for dock in docks) + chrome > height:
        # stacked, the docks would make the window taller than the screen (its bottom out of reach): tabs instead
        for dock in docks[1:]:
            window.tabifyDockWidget(docks[0], dock)
        docks[0].raise_()
        process_events(0.2)
        window.resize(window.width(), height)
    else:  # one above the other: each its share of the height by what its form wants (they scroll inside)
        window.resizeDocks(docks, [w.sizeHint().height() for w in widgets.values()], Qt.Orientation.Vertical)
    window.resizeDocks(docks, [DOCK_WIDTH] * len(docks), Qt.Orientation.Horizontal)
    image = next(layer for layer in viewer.layers if layer._type_string == "image")
    viewer.layers.selection.active = image
    return viewer, widgets


def wait_until_drawn(viewer, timeout_s: float = 30.0) -> None:
    """Process Qt events until the window and its canvas are shown, then a little longer so everything paints."""
    from qtpy.QtWidgets import QApplication

    window = viewer.window._qt_window
    canvas = viewer.window._qt_viewer.canvas.native
    deadline = time.monotonic() + timeout_s
    while not (window.isVisible() and canvas.isVisible() and canvas.width() > 0 and canvas.height() > 0):
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() > deadline:
            raise SystemExit(f"the napari window was not shown within {timeout_s:.0f} s")
    process_events(0.5)
    viewer.reset_view()  # fit the image to the canvas the docks left
    process_events(0.5)


def save_screenshot(viewer, widgets: dict, path: Path, colours: int | None = None) -> dict:
    """Save the whole window to ``path`` (PNG; ``colours``: a palette of that many) and what it shows to
    ``path`` with a .json suffix."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from PIL import Image

    window = viewer.window._qt_window
    for toast in window.findChildren(NapariQtNotification):
        toast.close()  # pop-ups would hide part of the docks
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(pixels).convert("RGB")
    if colours:  # a palette: a fraction of the file size, no visible change in flat interface pictures
        picture = picture.quantize(colours, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    picture.save(path, optimize=True)
    docks = []
    for name, widget in widgets.items():
        dock = widget.parentWidget()
        while dock is not None and not hasattr(dock, "inner_widget"):
            dock = dock.parentWidget()  # the QtViewerDockWidget around the plugin's widget
        docks.append(
            {
                "name": name,
                "widget": type(widget).__name__,
                "visible": bool(widget.isVisible()),
                "shown": not widget.visibleRegion().isEmpty(),  # on screen, not behind another dock's tab
                "dock_title": dock.windowTitle() if dock is not None else None,
                "tabbed_with": [other.windowTitle() for other in window.tabifiedDockWidgets(dock)] if dock else [],
                "height": widget.height(),
            }
        )
    shown = {
        "screenshot": str(path),
        "size": [int(pixels.shape[1]), int(pixels.shape[0])],
        "window": [window.width(), window.height()],
        "screen": [window.screen().availableGeometry().width(), window.screen().availableGeometry().height()],
        "layers": [layer.name for layer in viewer.layers],
        "docks": docks,
        "napari_dock_widgets": sorted(viewer.window.dock_widgets),
    }
    path.with_suffix(".json").write_text(json.dumps(shown, indent=2) + "\n")
    return shown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", choices=SAMPLES, default="nuclei", help="the sample to open (default nuclei)")
    parser.add_argument(
        "--screenshot", type=Path, metavar="PATH", help="save the window to PATH (PNG) and quit instead of running"
    )
    parser.add_argument("--colours", type=int, metavar="N", help="save the screenshot with a palette of N colours")
    args = parser.parse_args(argv)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and sys.platform == "linux":
        sys.exit("no display: run this on a desktop, or headless under xvfb-run with --screenshot PATH")

    import napari
    import torch  # noqa: F401  (before Qt starts: torch imported after a QApplication can crash on some platforms)

    viewer, widgets = open_viewer(args.sample, WINDOW if args.screenshot else None)
    if args.screenshot is None:
        print(f"napari is open with the {args.sample} sample and the {', '.join(WIDGETS)} widgets docked")
        napari.run()
        return 0
    wait_until_drawn(viewer)
    shown = save_screenshot(viewer, widgets, args.screenshot, args.colours)
    print(f"docked: {', '.join(d['name'] for d in shown['docks'])}; layers: {', '.join(shown['layers'])}")
    print(f"wrote {args.screenshot} ({shown['size'][0]} x {shown['size'][1]})")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
