"""Package layout only (metadata lives in pyproject.toml): the Hydra configs sit in the
repository's top-level ``conf/`` (one folder per config group) and are installed as the package
``surfacekit.conf``, so they are found from a checkout, an editable install and a wheel alike."""

from pathlib import Path

from setuptools import find_packages, setup

groups = sorted(p.name for p in (Path(__file__).parent / "conf").iterdir() if p.is_dir() and not p.name.startswith("_"))
setup(
    packages=find_packages(include=["surfacekit", "surfacekit.*"]) + ["surfacekit.conf"]
    + [f"surfacekit.conf.{g}" for g in groups],
    package_dir={"surfacekit.conf": "conf"},
    package_data={"surfacekit.conf": ["*.yaml"], **{f"surfacekit.conf.{g}": ["*.yaml"] for g in groups}},
)
