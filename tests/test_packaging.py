"""The package's metadata tells the truth: one version, and the declared dependencies are what the code imports."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import napari_dinounet

SRC = Path(napari_dinounet.__file__).parent
# Imported only where present, never needed to run: say so here, with the reason, rather than declare them.
OPTIONAL = {
    "triton": "probed and hidden by _widgets/_llvm_clash.py, never used",
    "shiboken6": "PySide6's, imported by _widgets/_jobs.py only when napari runs on PySide (the user's Qt binding)",
    "ome_zarr": "the ome-zarr extra: engine/io/omezarr.py imports it inside the functions that need it",
    "zarr": "the ome-zarr extra (and the testing one), imported where OME-Zarr stores are read",
    "dask": "the ome-zarr extra (and the testing one), imported where OME-Zarr stores are read",
    "bioimageio": "the bioimageio extra: engine/bioimageio.py imports it inside the functions that need it",
}


def _imported_top_level_modules() -> set[str]:
    names = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"napari_dinounet"}


def _declared() -> set[str]:
    requirements = importlib.metadata.requires("napari-dinounet") or []
    return {
        re.split(r"[ ;<>=!\[~]", r, maxsplit=1)[0].lower().replace("_", "-")
        for r in requirements
        if "extra ==" not in r
    }


def test_the_version_has_one_source():
    assert importlib.metadata.version("napari-dinounet") == napari_dinounet.__version__
    assert "version =" not in (SRC.parents[1] / "pyproject.toml").read_text().split("[project]")[1].split("[")[0]


def test_every_imported_library_is_a_declared_dependency_and_every_dependency_is_imported():
    distributions = importlib.metadata.packages_distributions()
    imported = _imported_top_level_modules() - set(OPTIONAL)
    needed = {distributions[name][0].lower().replace("_", "-") for name in imported}
    declared = _declared()
    assert needed - declared == set(), "imported but not declared in pyproject.toml"
    # npe2 reads napari.yaml; torchvision comes with timm, declared so that pip pairs it with the installed torch
    assert declared - needed - {"npe2", "torchvision"} == set(), "declared but never imported"
