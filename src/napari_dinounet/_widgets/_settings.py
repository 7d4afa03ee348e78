"""Remembering widget fields between napari sessions (QSettings in an INI file).

``NAPARI_DINOUNET_SETTINGS_DIR`` moves the file elsewhere: tests point it at a temporary folder so they
never touch the user's real settings.
"""

from __future__ import annotations

import os

from qtpy.QtCore import QSettings

SETTINGS_DIR_ENV = "NAPARI_DINOUNET_SETTINGS_DIR"


def settings() -> QSettings:
    """The plugin's settings store: the user's config folder, or ``$NAPARI_DINOUNET_SETTINGS_DIR``."""
    folder = os.environ.get(SETTINGS_DIR_ENV)
    if folder:
        return QSettings(os.path.join(folder, "napari-dinounet.ini"), QSettings.IniFormat)
    return QSettings(QSettings.IniFormat, QSettings.UserScope, "napari-dinounet", "napari-dinounet")


def recall(key: str, default: str = "") -> str:
    """The remembered text for ``key``, or ``default``."""
    value = settings().value(key, default)
    return default if value is None else str(value)


def remember(key: str, value: str) -> None:
    store = settings()
    store.setValue(key, value)
    store.sync()
