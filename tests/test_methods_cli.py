import sys
from pathlib import Path

import h5py
import numpy as np

from surfacekit.store import load_curves, load_group, load_members

ROOT = Path(__file__).resolve().parents[1]
TINY = ["population.size=2", "model.width=6", "model.depth=3", "model.activation=tanh", "data.train_size=100",
        "progress=false", "threads=1", "trainer.epochs=2"]


def test_cli_runs_every_trainer(run_cli, tmp_path):
    """A multirun of dtp and tp and a penalty job in the same directory; each writes its extra curves."""
    out = run_cli("-m", "trainer=dtp,tp", *TINY, f"hydra.sweep.dir={tmp_path}/sweep")
    assert out.returncode == 0, out.stderr[-3000:]
    # stages/alternations exist only in the penalty trainer's config, so it runs as its own job
    out = run_cli("trainer=penalty", *TINY, "trainer.stages=2", "trainer.alternations=2",
                  f"hydra.run.dir={tmp_path}/sweep/2")
    assert out.returncode == 0, out.stderr[-3000:]
    for job, method in enumerate(["dtp", "tp", "penalty"]):
        path = tmp_path / "sweep" / str(job) / "results.h5"
        curves = load_curves(path)
        members = load_members(path)
        assert len(members) == 2 and np.isfinite(members["final_test_loss"]).all()
        k, t = curves["train_loss"].shape
        if method == "penalty":
            for name in ("objective", "objective_w", "violation"):
                assert curves[name].shape == (k, t)
            assert curves["mu"].shape == (t,)
        else:
            for i in range(4):
                assert curves[f"cosine_layer{i}"].shape == (k, t)
            inverse = load_group(path, "aux_params")
            assert set(inverse) == {f"inverse.{l}.{p}" for l in (2, 3) for p in ("weight", "bias")}
            assert inverse["inverse.2.weight"].shape == (2, 6, 6)
            with h5py.File(path) as f:
                assert "inverse.2.weight" not in f["params"]
    # the comparison analysis reads the merged sweep and writes figures and a table
    sys.path.insert(0, str(ROOT / "analyses"))
    import training_methods

    assert training_methods.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "figs")]) == 0
    for name in ("endpoint_loss_histograms", "learning_curves", "cosine_to_backprop"):
        assert (tmp_path / "figs" / f"{name}.png").stat().st_size > 0
        assert (tmp_path / "figs" / f"{name}.pdf").stat().st_size > 0
    assert "penalty" in (tmp_path / "figs" / "summary.md").read_text()
