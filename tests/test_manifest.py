"""The npe2 manifest: it validates, names the right python objects, agrees with the format registry, and
loading it stays torch-free."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from importlib import resources

import npe2

MANIFEST = resources.files("napari_dinounet").joinpath("napari.yaml")
WIDGETS = {
    "Segment": "napari_dinounet._widgets.segment:SegmentWidget",
    "Fine-tune": "napari_dinounet._widgets.finetune:FineTuneWidget",
    "Export": "napari_dinounet._widgets.export:ExportWidget",
}


def _manifest() -> npe2.PluginManifest:
    with resources.as_file(MANIFEST) as path:
        return npe2.PluginManifest.from_file(path)


def _python_names(manifest: npe2.PluginManifest) -> dict[str, str]:
    return {command.id: command.python_name for command in manifest.contributions.commands}


def test_manifest_validates_and_is_the_installed_one():
    manifest = _manifest()
    assert manifest.name == "napari-dinounet"
    pm = npe2.PluginManager()
    pm.discover()
    assert pm.get_manifest("napari-dinounet").contributions.commands == manifest.contributions.commands


def test_widgets_writer_samples_and_menu():
    manifest = _manifest()
    names = _python_names(manifest)
    widgets = {widget.display_name: names[widget.command] for widget in manifest.contributions.widgets}
    assert widgets == WIDGETS

    (writer,) = manifest.contributions.writers
    assert [str(t) for t in writer.layer_types] == ["labels"]
    assert {".tif", ".tiff", ".png", ".nii.gz"} <= set(writer.filename_extensions)
    assert names[writer.command] == "napari_dinounet._writer:write_labels"

    (reader,) = manifest.contributions.readers
    assert set(reader.filename_patterns) == {"*.nii", "*.nii.gz"}
    assert names[reader.command] == "napari_dinounet._reader:get_reader"

    assert {sample.key for sample in manifest.contributions.sample_data} == {"nuclei", "mni152", "mni152_volume"}
    menu = manifest.contributions.menus["napari/layers/segment"]
    widget_commands = {widget.command for widget in manifest.contributions.widgets}
    assert {item.command for item in menu} == widget_commands


def test_reader_and_writer_patterns_are_the_registrys():
    """napari.yaml cannot be generated when napari reads it, so this is the guard: a format added to the
    registry (engine/io) or marked exported must be added to the manifest too, and the other way round."""
    from napari_dinounet import _reader
    from napari_dinounet.engine.io import registered_formats

    manifest = _manifest()
    (writer,) = manifest.contributions.writers
    exported = [ending for fmt in registered_formats() if fmt.exported for ending in fmt.extensions]
    assert writer.filename_extensions == exported
    (reader,) = manifest.contributions.readers
    assert sorted(reader.filename_patterns) == sorted("*" + ending for ending in _reader.endings())


def test_every_python_name_resolves_to_a_callable():
    for python_name in _python_names(_manifest()).values():
        module_name, attribute = python_name.split(":")
        assert callable(getattr(importlib.import_module(module_name), attribute)), python_name


def test_start_up_path_does_not_import_torch():
    """What napari touches before a widget opens: the manifest, samples, reader, writer, the widgets package."""
    script = f"""
import json, sys, npe2
pm = npe2.PluginManager()
pm.discover()
manifest = pm.get_manifest("napari-dinounet")
npe2.PluginManifest.from_file({str(MANIFEST)!r})
import napari_dinounet, napari_dinounet._widgets, napari_dinounet._writer, napari_dinounet._sample_data
import napari_dinounet._reader
from napari_dinounet._sample_data import mni152_sample, mni152_volume_sample, nuclei_sample
layers = nuclei_sample() + mni152_sample() + mni152_volume_sample()
heavy = sorted(name for name in ("torch", "timm", "torchvision") if name in sys.modules)
print(json.dumps({{"layers": len(layers), "heavy": heavy}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"layers": 6, "heavy": []}
