"""analyses/net2net.py on a tiny experiment=net2net run (narrow, continued, scratch, and the certified
point before and after widening with their spectra); its one-line errors."""

import importlib

import numpy as np
import pandas as pd
import pytest

from support import _in_process

TINY = ("experiment=net2net", "progress=false", "population.size=2", "data.train_size=60", "data.test_size=40",
        "trainer.batch_size=20")
WIDEN = ("population.transform=widen", "population.new_width=5")


def net2net():
    return importlib.import_module("analyses.net2net")


def run(root, name, *args):
    """A training job in ROOT/name; a post-hoc task (name None) writes beside its source."""
    command = [*TINY, *args, f"hydra.run.dir={root / name}"] if name else ["progress=false", *args]
    result = _in_process(command, root.parent)
    assert result.returncode == 0, result.stderr


def test_continued_scratch_and_the_widened_certified_point(tmp_path, capsys):
    root = tmp_path / "n2n"
    run(root, "narrow", "trainer.epochs=3")
    narrow = root / "narrow"
    run(root, None, "task=certify", f"source={narrow}", "certify.max_iter=500")
    start = (f"population.init_from={narrow}", "population.init_point=certify", "trainer.epochs=0")
    run(root, "before", *start)
    run(root, "after", *start, *WIDEN)
    for name in ("before", "after"):
        run(root, None, "task=spectrum", f"source={root / name}")
    run(root, "continued", f"population.init_from={narrow}", *WIDEN, "population.transform_noise=0.1", "trainer.epochs=2")
    run(root, "scratch", "model.width=5", "trainer.epochs=5")
    capsys.readouterr()
    assert net2net().main([str(root), "--out", str(tmp_path / "figures")]) == 0
    table = pd.read_csv(tmp_path / "figures" / "net2net.csv")
    for name in ("net2net_curves.png", "net2net_spectrum.pdf", "net2net.md"):
        assert (tmp_path / "figures" / name).is_file()
    cont = table[table.job == "continued"]
    assert len(cont) == 2 and (cont.train_change_at_transform.abs() < 1e-12).all()
    assert (cont.test_change_at_transform.abs() < 1e-12).all() and (cont.epochs == 5).all()
    assert (table[table.job == "scratch"].epochs == 5).all()
    before = table[table.job == "before"].reset_index(drop=True)
    after = table[table.job == "after"].reset_index(drop=True)
    assert list(before.num_params) == [41, 41] and list(after.num_params) == [67, 67]  # 10-3-2 -> 10-5-2
    # the certified narrow points are critical and so are their widenings (no L2 term: the preset's)
    assert (before.grad_norm2 < 1e-10).all() and (after.grad_norm2 < 1e-10).all()
    # the index of task=spectrum equals the count of the dense eigenvalues below its threshold
    assert (after.index_count == after.dense_index_count).all() and (before.index_count == before.dense_index_count).all()
    assert (before.index_count == 0).all()  # tiny narrow teacher students: certified minima
    np.testing.assert_allclose(after.final_train_loss, before.final_train_loss, rtol=0, atol=1e-12)


def test_one_line_errors(tmp_path, capsys):
    assert net2net().main([str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == f"net2net: error: {tmp_path / 'nothing'}: not a directory"
    (tmp_path / "root").mkdir()
    assert net2net().main([str(tmp_path / "root")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "narrow: missing; ROOT needs the jobs" in err[0]


def test_help(capsys):
    with pytest.raises(SystemExit) as done:
        net2net().main(["--help"])
    assert done.value.code == 0 and "--dense-limit" in capsys.readouterr().out
