"""_widgets/_llvm_clash: triton is hidden only when libLLVM is loaded, with a warning, and never when opted out."""

from __future__ import annotations

import logging
import sys

import pytest

from napari_dinounet._widgets import _llvm_clash


@pytest.fixture
def fresh_process(monkeypatch):
    """As in a napari process before torch: triton not imported, libLLVM mapped, no opt-out set."""
    absent = object()
    triton = sys.modules.pop("triton", absent)
    monkeypatch.setattr(_llvm_clash, "_llvm_loaded", lambda: True)
    monkeypatch.delenv(_llvm_clash.KEEP_TRITON_ENV, raising=False)
    yield monkeypatch
    sys.modules.pop("triton", None)  # what the test left, then the process's own state back
    if triton is not absent:
        sys.modules["triton"] = triton


def test_hiding_triton_is_logged_with_the_opt_out(fresh_process, caplog):
    with caplog.at_level(logging.WARNING, logger=_llvm_clash.__name__):
        assert _llvm_clash.avoid_triton_llvm_clash() is True
    assert sys.modules["triton"] is None
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "libLLVM" in record.getMessage() and "NAPARI_DINOUNET_KEEP_TRITON=1" in record.getMessage()
    caplog.clear()
    assert _llvm_clash.avoid_triton_llvm_clash() is False  # once per process: no second warning
    assert caplog.records == []


def test_the_environment_variable_keeps_triton(fresh_process, caplog):
    fresh_process.setenv(_llvm_clash.KEEP_TRITON_ENV, "1")
    with caplog.at_level(logging.DEBUG, logger=_llvm_clash.__name__):
        assert _llvm_clash.avoid_triton_llvm_clash() is False
    assert "triton" not in sys.modules and caplog.records == []


def test_nothing_happens_without_libllvm(fresh_process):
    fresh_process.setattr(_llvm_clash, "_llvm_loaded", lambda: False)
    assert _llvm_clash.avoid_triton_llvm_clash() is False
    assert "triton" not in sys.modules
