"""Output safety (reliability report defects 11, 14, 10, 18): file modes, one-line OS errors, run locks,
stale temporary files. Everything an engine write goes through is in engine/atomic.py."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys

import pytest

from napari_dinounet.engine.atomic import (
    atomic_path,
    exclusive_run,
    lock_path,
    output_error,
    probe_folder,
    probe_writable,
    stale_temporaries,
)
from napari_dinounet.engine.errors import InputError, OutputError

is_root = hasattr(os, "geteuid") and os.geteuid() == 0


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_file_gets_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.json") == 0o644


def test_replaced_file_keeps_its_mode(tmp_path):
    target = tmp_path / "scores.json"
    target.write_text("old")
    os.chmod(target, 0o664)
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert _mode(target) == 0o664


def test_output_error_is_an_input_error_naming_path_and_fix(tmp_path):
    err = output_error(tmp_path / "x.tif", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(err, InputError)
    assert str(tmp_path / "x.tif") in str(err) and "disk is full" in str(err)
    short_write = output_error("y.tif", OSError("2250000 requested and 794352 written"))
    assert "disk has space" in str(short_write)


def test_write_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "a.tif"
    blocker.write_bytes(b"image")
    with (
        pytest.raises(OutputError, match="is a file, not a folder"),
        atomic_path(blocker / "sub" / "labels.tif") as tmp,
    ):
        tmp.write_bytes(b"x")
    assert blocker.read_bytes() == b"image"


def test_write_onto_a_folder_is_refused_before_writing(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputError, match="it is a folder"), atomic_path(tmp_path / "adir"):
        raise AssertionError("the body must not run")
    with pytest.raises(OutputError, match="it is a folder"):
        probe_writable(tmp_path / "adir")


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "h.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(OutputError, match="disk is full"), atomic_path(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["h.safetensors"]


@pytest.mark.skipif(is_root, reason="root writes into read-only folders")
def test_read_only_folder_is_found_by_the_probe(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="no permission"):
            probe_folder(folder)
    finally:
        folder.chmod(0o755)


def test_read_only_folder_as_root_without_dac_override(tmp_path):
    """What a normal user meets, checked as root too: setpriv drops root's permission override."""
    if not is_root:
        pytest.skip("covered by the test above")
    setpriv = "/usr/bin/setpriv"
    if not os.path.exists(setpriv):
        pytest.skip("no setpriv")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    code = (
        f"from napari_dinounet.engine.atomic import probe_folder\n"
        f"from napari_dinounet.engine.errors import OutputError\n"
        f"try:\n    probe_folder({str(folder)!r})\nexcept OutputError as e:\n    print('refused:', e)\n"
    )
    result = subprocess.run(
        [setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    folder.chmod(0o755)
    assert "refused:" in result.stdout and "no permission" in result.stdout


def test_exclusive_run_refuses_a_second_holder(tmp_path):
    target = tmp_path / "h.safetensors"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock_path(target).write_text(str(holder.pid))
        with pytest.raises(OutputError, match=f"process {holder.pid}"), exclusive_run(target):
            pass
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and is taken over, then removed at the end
    with exclusive_run(target):
        assert lock_path(target).read_text() == str(os.getpid())
    assert not lock_path(target).exists()


def test_exclusive_run_removes_stale_temporaries_only(tmp_path):
    target = tmp_path / "h.safetensors"
    state = tmp_path / "h.state.safetensors"
    leftover = tmp_path / ".h.state.o6a392iw.tmp.state.safetensors"  # as the SIGTERM case of the report left it
    leftover.write_bytes(b"")
    unrelated = tmp_path / ".h.notes.txt"
    unrelated.write_text("mine")
    assert stale_temporaries(state) == [leftover]
    with exclusive_run(target, state):
        assert not leftover.exists()
    assert unrelated.read_text() == "mine"
