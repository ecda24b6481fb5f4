"""The wheel holds every package of qaudit (pyproject.toml lists them by hand).

In the bare run (an installed wheel, no source tree) every module of the installed
qaudit must import: a subpackage left out of the wheel fails the module importing it.
In a checkout the list in pyproject.toml is also compared with the tree.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import pytest

import qaudit

from .conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_every_module_of_the_installed_package_imports():
    names = [m.name for m in pkgutil.walk_packages(qaudit.__path__, "qaudit.") if m.name != "qaudit.__main__"]
    assert "qaudit.pipeline.sources.images" in names and "qaudit.remedy.causes" in names
    for name in names:
        importlib.import_module(name)  # optional dependencies (Ray, OpenVINO, Pillow) are imported lazily


def test_pyproject_lists_every_package_of_the_tree():
    if not (REPO / "qaudit").is_dir():
        pytest.skip("no source tree (the bare run tests the installed wheel)")
    listed = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]
    tree = sorted(".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "qaudit").rglob("__init__.py"))
    assert sorted(listed) == tree, "add the missing packages to [tool.setuptools] packages in pyproject.toml"
