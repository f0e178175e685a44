"""Package discovery for the folder mapping in pyproject.toml (all other metadata lives there).

export/, distill/ and benchmarks/ install as mobileclip.export, mobileclip.distill and
mobileclip.benchmarks ([tool.setuptools.package-dir]). pyproject.toml's own
`[tool.setuptools.packages.find]` names packages after their folders, so it cannot find
those; this finds every package (a folder with an __init__.py) under each mapped folder,
so a new sub-package ships in the wheel without being listed anywhere.
"""
import sys
from pathlib import Path

from setuptools import find_packages, setup

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - build-system.requires installs tomli there
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
PACKAGE_DIR = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def packages() -> list:
    found = set()
    for name, folder in PACKAGE_DIR.items():
        found.add(name)
        found.update(f"{name}.{sub}" for sub in find_packages(str(HERE / folder)))
    return sorted(found)


setup(packages=packages())
