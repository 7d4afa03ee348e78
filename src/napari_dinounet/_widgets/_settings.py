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


def persisted(field, key: str, default):
    """Bind a form field to the setting ``key``: it starts at the remembered value (``default`` when none, or
    when the remembered text no longer fits the field) and every change is remembered. Works for
    QSpinBox/QDoubleSpinBox (numbers), QCheckBox (true/false), QComboBox (the current text) and QLineEdit.
    Returns ``field`` so a form can bind and add it in one line."""
    text = recall(key, _as_text(default))
    if hasattr(field, "setChecked"):
        field.setChecked(text == "true")
        field.toggled.connect(lambda checked: remember(key, _as_text(checked)))
    elif hasattr(field, "setCurrentText"):
        if field.findText(text) >= 0:
            field.setCurrentText(text)
        field.currentTextChanged.connect(lambda value: remember(key, value))
    elif hasattr(field, "setText"):
        field.setText(text)
        field.textChanged.connect(lambda value: remember(key, value))
    else:
        number = type(field.value())
        try:
            field.setValue(number(text))
        except ValueError:
            field.setValue(number(default))
        field.valueChanged.connect(lambda value: remember(key, _as_text(value)))
    return field


def _as_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)
