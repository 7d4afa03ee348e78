"""The plugin's three docks fit a laptop screen (real viewer at 1600x1000; run under ``xvfb-run -a``).

Segment, Fine-tune and Export are opened as a user opens them (Plugins menu: ``add_plugin_dock_widget``)
into one viewer. napari stacks them in its right dock area, where Qt never squeezes a dock below its
minimum size hint: the sum of the three is the least height the dock area needs, and it must be at most
1000 px. The measured heights are printed (``pytest -s``).
"""

from __future__ import annotations

import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QScrollArea

SCREEN_HEIGHT = 1000
DOCKS = ("Segment", "Fine-tune", "Export")


@pytest.fixture
def viewer(make_napari_viewer):
    from napari_dinounet.engine.bundled_data import load_nuclei

    viewer = make_napari_viewer(show=True)
    image, _ = load_nuclei()
    viewer.add_image(image, name="nuclei")  # the forms with a layer chosen, as a user sees them
    return viewer


def test_three_docks_fit_1000_px(qtbot, viewer):
    """The least height the three docks need together (what Qt enforces: a dock whose form scrolls needs
    less than its form) is at most 1000 px, and a 1600x1000 window holding them stays 1000 px high."""
    window = viewer.window._qt_window
    window.resize(1600, SCREEN_HEIGHT)
    opened = {name: viewer.window.add_plugin_dock_widget("napari-dinounet", name) for name in DOCKS}
    qtbot.wait(50)  # layouts settle
    for name, (dock, widget) in opened.items():  # stacked, not tabbed: each needs its own height
        assert dock.isVisible() and window.dockWidgetArea(dock) == Qt.RightDockWidgetArea, name
        assert window.tabifiedDockWidgets(dock) == [], name
        assert dock.isAncestorOf(widget) and widget.isVisible(), name  # the plugin's form is in the dock
    heights = {name: dock.minimumSizeHint().height() for name, (dock, _) in opened.items()}
    forms = {name: _form_height(widget) for name, (_, widget) in opened.items()}
    total = sum(heights.values())
    print(
        f"minimum dock heights {heights}, together {total} px (the forms themselves {forms}, "
        f"together {sum(forms.values())} px; a form taller than its dock scrolls); the window's minimum "
        f"height with them {window.minimumSizeHint().height()} px, its height {window.height()} px"
    )
    assert total <= SCREEN_HEIGHT, f"the three docks need {total} px of height ({heights})"
    assert window.height() <= SCREEN_HEIGHT, f"the docks made the window {window.height()} px high"


def _form_height(widget) -> int:
    """The height the whole form needs: the content of its scroll area when it scrolls."""
    scroll = widget if isinstance(widget, QScrollArea) else widget.findChild(QScrollArea)
    inner = scroll.widget() if scroll is not None and scroll.widget() is not None else widget
    return inner.minimumSizeHint().height()
