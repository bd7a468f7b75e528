"""The examples in examples/ run and print what they promise (slow: about 10 s of CPU each)."""

import runpy

import pytest

from support import ROOT


@pytest.mark.slow
@pytest.mark.parametrize("name,expected", [("cnn_spectrum.py", "per layer (diagonal blocks of the Hessian)"),
                                           ("transformer_block.py", "attention block: P = 288")])
def test_example_runs(name, expected, capsys):
    runpy.run_path(str(ROOT / "examples" / name), run_name="__main__")
    assert expected in capsys.readouterr().out
