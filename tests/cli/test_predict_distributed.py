"""``torchrun -m napari_dinounet.predict``: 2 CPU processes (gloo) write what one process writes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from _widget_helpers import write_tiny_heads

from napari_dinounet import predict as distributed_predict

pytestmark = pytest.mark.usefixtures("one_torch_thread", "quiet_random_backbone")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(heads, inputs, out, processes=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command += ["--master_port", str(_free_port()), "-m", "napari_dinounet.predict", *map(str, inputs)]
    command += ["--heads", str(heads), "--backbone", "random:tiny", "--out", str(out), "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def _one_process(heads, inputs, out, *extra):
    # started without torchrun, the module predicts on this one process
    args = [*map(str, inputs), "--heads", str(heads), "--backbone", "random:tiny", "--out", str(out)]
    assert distributed_predict.main([*args, "--device", "cpu", "--quiet", *extra]) == 0


def test_two_processes_share_the_files_and_write_what_one_process_writes(tmp_path):
    heads = write_tiny_heads(tmp_path / "heads.safetensors")
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):  # an odd count: rank 0 predicts two, rank 1 one
        tifffile.imwrite(inputs / f"{name}.tif", rng.integers(0, 3000, (70, 90)).astype(np.uint16))
    done = _torchrun(heads, [inputs], tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    _one_process(heads, [inputs], tmp_path / "one")
    for name in ("a", "b", "c"):
        two = tifffile.imread(tmp_path / "two" / f"{name}.tif")
        np.testing.assert_array_equal(two, tifffile.imread(tmp_path / "one" / f"{name}.tif"))
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["a.tif", "b.tif", "c.tif"]  # no leftovers


def test_two_processes_share_the_slices_of_one_volume(tmp_path):
    heads = write_tiny_heads(tmp_path / "heads.safetensors")
    # slices of very different brightness: statistics over each rank's slices alone would change the labels
    volume = np.random.default_rng(1).normal(0, 1, (3, 64, 80)).astype(np.float32)
    volume *= np.array([1.0, 5.0, 20.0], np.float32)[:, None, None]
    np.save(tmp_path / "volume.npy", volume)
    done = _torchrun(heads, [tmp_path / "volume.npy"], tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    _one_process(heads, [tmp_path / "volume.npy"], tmp_path / "one")
    one = np.load(tmp_path / "one" / "volume.npy")
    assert one.shape == (3, 64, 80) and len(np.unique(one)) == 2
    np.testing.assert_array_equal(np.load(tmp_path / "two" / "volume.npy"), one)
