"""The configuration tree ships inside the wheel: built, installed into its own directory and used
from outside the checkout (conf/ at the top level is mapped to the package surfacekit.conf)."""

import shutil
import subprocess
import sys

import pytest

from support import ROOT


@pytest.mark.slow  # builds a wheel (about 20 s)
def test_wheel_carries_the_configs_and_runs_a_job(tmp_path):
    source = tmp_path / "source"  # a copy: the build writes build/ and egg-info into its source tree
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "outputs", "*.egg-info",
                                                                 "__pycache__", "tests", "analyses", "docs"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("surfacekit-*.whl")
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    assert (site / "surfacekit" / "conf" / "config.yaml").exists()
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import surfacekit, surfacekit.app as app; "
            "assert surfacekit.__file__.startswith(sys.argv[1]), surfacekit.__file__; "
            "sys.argv = ['surfacekit', 'population.size=1', 'model.width=2', 'trainer.epochs=1', "
            "'data.train_size=50', 'progress=false', 'hydra.run.dir=' + sys.argv[2]]; app.main()")
    run = subprocess.run([sys.executable, "-c", code, str(site), str(tmp_path / "run")], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "run" / "results.h5").exists()
