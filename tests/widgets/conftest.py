"""Widget tests: every test keeps the widgets' remembered settings in its own temporary folder."""

from __future__ import annotations

from pathlib import Path

import _widget_helpers  # noqa: F401 (torch and timm load before any viewer's OpenGL: see that module)
import pytest

from napari_dinounet._widgets._settings import SETTINGS_DIR_ENV


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch) -> Path:
    """The widgets' QSettings file lives in a temporary folder, never in the user's settings."""
    folder = tmp_path / "settings"
    folder.mkdir()
    monkeypatch.setenv(SETTINGS_DIR_ENV, str(folder))
    return folder
