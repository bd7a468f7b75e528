"""Every analysis script on tiny synthetic results files (current schema; run as files they are
covered by tests/test_minima_analysis.py and tests/test_spinglass_task.py): figures and tables land where promised (beside
the source by default), their numbers match the inputs, and bad input gives one line and exit status 2.
The figure helpers of surfacekit.plots are checked on the properties the figures rely on."""

import importlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from surfacekit import plots, store
from surfacekit.spinglass import thresholds

SCRIPTS = ["hessian_spectra", "index_vs_loss", "interpolation", "landscape_2d", "minima_histograms", "spinglass",
           "toy_optimizers", "training_methods"]
WITH_SOURCE = [s for s in SCRIPTS if s != "toy_optimizers"]


def script(name):
    return importlib.import_module(f"analyses.{name}")


def config(width=8, depth=1, method="backprop", correction=True, loss="cross_entropy"):
    trainer = {"method": method, **({"difference_correction": correction} if method == "dtp" else {})}
    return yaml.safe_dump({"model": {"width": width, "depth": depth, "loss": loss}, "trainer": trainer})


def job(path, members, groups=None, cfg=None, overrides=(), attrs=None):
    """A results file of the current schema: members, more groups, config and overrides."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return store.write_results(path, {"members": members, **(groups or {})},
                               {**store.provenance(), "kind": "job", "config": cfg or config(),
                                "overrides": list(overrides), **(attrs or {})})


def train_members(width, k, rng, depth=1):
    train = rng.normal(1.0 / width, 0.1 / width, k)
    return {"member": np.arange(k), "width": np.full(k, width), "depth": np.full(k, depth), "final_train_loss": train,
            "final_test_loss": train + np.abs(rng.normal(0.05, 0.01 / width, k)), "test_error": np.full(k, 0.1),
            "diverged": np.zeros(k, dtype=bool)}


def one_error_line(capsys, name):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{name}: error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- command line

@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        script(name).main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith(f"usage: {name}") and "--out" in out


@pytest.mark.parametrize("name", WITH_SOURCE)
def test_missing_path_and_empty_sweeps_are_one_line(name, tmp_path, capsys):
    main = script(name).main
    assert main([str(tmp_path / "missing.h5")]) == 2
    assert "no such results file" in one_error_line(capsys, name)
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "empty sweep" in one_error_line(capsys, name)
    (tmp_path / "failed" / "0" / ".hydra").mkdir(parents=True)  # a sweep whose only job left no results
    assert main([str(tmp_path / "failed")]) == 2
    assert "empty sweep" in one_error_line(capsys, name)


@pytest.mark.parametrize("name,expected", [
    ("hessian_spectra", "no /spectrum group"), ("index_vs_loss", "no certified points"),
    ("interpolation", "no /landscape/interpolation"), ("landscape_2d", "no group /landscape/slice2d"),
    ("spinglass", "no spin-glass members"),
])
def test_a_file_without_the_group_is_one_line(name, expected, tmp_path, capsys):
    path = job(tmp_path / "run" / "results.h5", train_members(8, 4, np.random.default_rng(0)))
    assert script(name).main([str(path)]) == 2
    assert expected in one_error_line(capsys, name)


@pytest.mark.parametrize("name", ["minima_histograms", "training_methods"])
def test_a_file_without_training_members_is_one_line(name, tmp_path, capsys):
    path = job(tmp_path / "run" / "results.h5", {"energy_per_n": np.zeros(3), "N": np.full(3, 10), "p": np.full(3, 3)})
    assert script(name).main([str(path)]) == 2
    assert "final_test_loss" in one_error_line(capsys, name)


# ---------------------------------------------------------------------------- each analysis

def spectrum_group(k, rng, scale):
    steps, probes = 6, 2
    nodes = np.sort(rng.normal(0, scale, (k, probes, steps)), axis=-1)
    return {"top": scale * (2 + rng.random((k, 3))), "bottom": -scale * rng.random((k, 3)), "trace": rng.random(k),
            "index_fraction": rng.random(k) / 10, "index_count": rng.integers(0, 5, k), "index_at_least": np.zeros(k, bool),
            "density_nodes": nodes, "density_weights": np.full((k, probes, steps), 1 / steps), "analysed": np.ones(k, bool)}


def test_hessian_spectra_writes_beside_the_sweep(tmp_path):
    rng = np.random.default_rng(1)
    for j, width in enumerate((5, 25)):
        job(tmp_path / str(j) / "results.h5", train_members(width, 4, rng), {"spectrum": spectrum_group(4, rng, 1.0 / width)},
            overrides=[f"model.width={width}"], attrs={"spectrum_relative_threshold": 1e-5})
    assert script("hessian_spectra").main([str(tmp_path)]) == 0
    out = tmp_path / "analysis" / "hessian_spectra"
    for name in ("density_per_width", "index_vs_width", "top_eigenvalue_vs_width"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.pdf").stat().st_size > 0
    table = pd.read_csv(out / "spectra_by_width.csv")
    spectrum = store.load_group(tmp_path, "spectrum", "1")
    assert table.width.tolist() == [5, 25]
    assert table.lambda_max_mean[1] == pytest.approx(spectrum["top"][:, 0].mean(), rel=1e-12)


def critical_group(n, rng, slope):
    loss = np.sort(rng.random(n))
    return {"loss": loss, "index_fraction": slope * loss + rng.normal(0, 0.01, n), "index_count": np.arange(n) % 5,
            "accepted": np.arange(n) % 4 != 0,
            "gradient_flat": np.arange(n) % 8 == 0, "grad_norm2": np.where(np.arange(n) % 4 != 0, 1e-12, 1e-3)}


def test_index_vs_loss_table_and_figure(tmp_path, capsys):
    rng = np.random.default_rng(2)
    groups = {"critical/newton_mr": critical_group(16, rng, 0.3), "critical/gradnorm": critical_group(12, rng, -0.2)}
    path = job(tmp_path / "run" / "results.h5", train_members(8, 2, rng), groups)
    assert script("index_vs_loss").main([str(path), "--permutations", "500"]) == 0
    assert "no accepted critical point with a stored endpoint; skipped" in capsys.readouterr().err
    out = tmp_path / "run" / "analysis" / "index_vs_loss"
    assert (out / "index_vs_loss.png").stat().st_size > 0 and (out / "index_vs_loss.pdf").exists()
    table = pd.read_csv(out / "index_vs_loss.csv").set_index("source")
    g = groups["critical/newton_mr"]
    acc = g["accepted"]
    row = table.loc["finder runs (newton_mr)"]
    assert row["accepted"] == acc.sum() and row["points"] == 16
    assert row["spearman_rho_accepted"] == pytest.approx(sps.spearmanr(g["loss"][acc], g["index_fraction"][acc]).statistic)
    assert table.loc["all accepted", "accepted"] == acc.sum() + groups["critical/gradnorm"]["accepted"].sum()
    assert "nan" not in (out / "index_vs_loss.md").read_text()  # Bray-Dean not fitted: blank, not nan
    assert script("index_vs_loss").main([str(path), "--finders", "newton"]) == 2
    assert "no finder runs" in one_error_line(capsys, "index_vs_loss")
    assert script("index_vs_loss").main([str(path), "--finders", "bfgs"]) == 2
    assert "no finder(s) ['bfgs']" in one_error_line(capsys, "index_vs_loss")


def analysis_file(source, task, groups, settings=None, digest="0123abcd", end_time=None):
    """The analysis file a post-hoc task writes beside a job (SOURCE_DIR/analyses/TASK-HASH/TASK.h5), joined by run_id."""
    import json

    import h5py

    path = source.parent / "analyses" / f"{task}-{digest}" / f"{task}.h5"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:
        f.attrs.update({**store.provenance(), "kind": "analysis", "task": task, "end_time": end_time or store.now_iso(),
                        "settings": json.dumps(settings or {}), "objective": "trained", "bn_mode": "batch"})
        g = f.create_group(f"jobs/{source.parent.name}")
        g.attrs.update({"source_run_id": str(plots.h5_attr(source, "run_id")), "source_path": str(source)})
        for name, arrays in groups.items():
            for key, value in arrays.items():
                g[f"{name}/{key}"] = value
    return path


def test_index_vs_loss_reads_the_critical_analysis_beside_the_job(tmp_path):
    """The layout task=critical writes: /critical lives in SOURCE/analyses/critical-HASH/critical.h5, joined to
    the job by its run_id (the training file has no /critical)."""
    rng = np.random.default_rng(3)
    path = job(tmp_path / "run" / "results.h5", train_members(8, 2, rng))
    group = critical_group(12, rng, 0.4)
    analysis_file(path, "critical", {"critical/levenberg_marquardt": group})
    assert script("index_vs_loss").main([str(path), "--permutations", "200"]) == 0
    table = pd.read_csv(tmp_path / "run" / "analysis" / "index_vs_loss" / "index_vs_loss.csv")
    assert table.source.tolist() == ["finder runs (levenberg_marquardt)", "all accepted"]
    assert table.accepted[0] == group["accepted"].sum()


def test_landscape_direction_label_comes_from_the_landscape_analysis(tmp_path):
    rng = np.random.default_rng(4)
    path = job(tmp_path / "run" / "results.h5", train_members(8, 2, rng))
    assert script("landscape_2d").direction_label(path, "run") == ""
    slices = landscape_groups(2, rng)
    analysis_file(path, "landscape", {"landscape/slice2d": slices["landscape/slice2d"]},
                  {"slice": {"normalization": "layer"}}, "aaaa0000", "2026-01-01T00:00:00")
    assert script("landscape_2d").direction_label(path, "run") == "layer-normalized"
    # a newer analysis that computed only slice1d (other settings) does not relabel the slice2d it lacks
    analysis_file(path, "landscape", {"landscape/slice1d": slices["landscape/slice1d"]},
                  {"slice": {"normalization": "filter"}}, "bbbb1111", "2026-02-01T00:00:00")
    assert script("landscape_2d").direction_label(path, "run") == "layer-normalized"


def sweep_with_analyses(tmp_path, rng):
    """A two-job sweep directory; job 0 has an interpolation analysis hidden behind a newer landscape
    analysis of slices only; job 1 has only a slice analysis."""
    paths = [job(tmp_path / "sweep" / str(j) / "results.h5", train_members(8, 3, rng)) for j in (0, 1)]
    groups = landscape_groups(3, rng)
    groups["landscape/interpolation_init"]["train_objective_barrier"] = np.array([0.5, 0.25, 0.125])
    analysis_file(paths[0], "landscape", {k: v for k, v in groups.items() if "interpolation" in k},
                  {"slice": {"normalization": "filter"}}, "aaaa0000", "2026-01-01T00:00:00")
    for path in paths:
        analysis_file(path, "landscape", {k: v for k, v in groups.items() if "slice" in k},
                      {"slice": {"normalization": "layer"}}, "bbbb1111", "2026-02-01T00:00:00")
    return tmp_path / "sweep"


def test_landscape_2d_on_a_sweep_asks_for_the_job(tmp_path, capsys):
    # before: landscape_2d suggested "(job=...)", which is no command-line option
    name = "landscape_2d"
    sweep = sweep_with_analyses(tmp_path, np.random.default_rng(6))
    assert script(name).main([str(sweep)]) == 2
    assert "holds 2 jobs ['0', '1']; name one with --job NAME" in one_error_line(capsys, name)
    assert script(name).main([str(sweep), "--job", "7"]) == 2
    assert "no job '7'; its jobs are ['0', '1']" in one_error_line(capsys, name)
    assert script(name).main([str(sweep), "--job", "1", "--out", str(tmp_path / "out")]) == 0


def test_interpolation_reads_every_job_of_a_sweep_and_both_objectives(tmp_path, capsys):
    # before: "no /landscape/interpolation_* groups" on a sweep; the table showed data-loss barriers only
    sweep = sweep_with_analyses(tmp_path, np.random.default_rng(7))
    assert script("interpolation").main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "train_*, test_*: data loss of the split (no weight decay); train_objective_barrier: the trained objective" in out
    table = pd.read_csv(sweep / "analysis" / "interpolation" / "interpolation_barriers.csv")
    assert set(table.job.astype(str)) == {"0"}  # job 1 has slices only
    init = table[table.path == "initialization -> solution"]
    assert init.train_objective_barrier.tolist() == [0.5, 0.25, 0.125]
    assert table[table.path == "solution -> solution"].train_objective_barrier.isna().all()


def landscape_groups(k, rng):
    alpha = np.linspace(-0.5, 1.5, 21)
    bump = np.sin(np.pi * np.clip(alpha, 0, 1))
    curve = lambda base: base[:, None] + bump[None] * rng.random((len(base), 1))  # noqa: E731
    init = {"alpha": alpha, "member": np.arange(k), "train_loss": curve(np.ones(k)), "test_loss": curve(np.ones(k) * 1.2)}
    for split in ("train", "test"):
        init |= {f"{split}_loss0": init[f"{split}_loss"][:, 5], f"{split}_loss1": init[f"{split}_loss"][:, 15],
                 f"{split}_barrier": rng.random(k), f"{split}_barrier_linear": rng.random(k)}
    init["train_monotone"] = np.zeros(k, bool)
    pairs = {"alpha": alpha, "pair_a": np.arange(k - 1), "pair_b": np.arange(1, k), "train_loss": curve(np.ones(k - 1)),
             "train_loss0": np.ones(k - 1), "train_loss1": np.ones(k - 1), "train_barrier": rng.random(k - 1),
             "train_barrier_linear": rng.random(k - 1)}
    x = np.linspace(-1, 1, 7)
    bowl = 0.1 + x[:, None] ** 2 + 2 * x[None] ** 2
    s2 = {"x": x, "y": x, "member": np.arange(k), "train_loss": np.stack([bowl * (1 + m) for m in range(k)])}
    s1 = {"x": x, "member": np.arange(k), "train_loss": np.stack([bowl[:, 3] * (1 + m) for m in range(k)])}
    return {"landscape/interpolation_init": init, "landscape/interpolation_pairs": pairs, "landscape/slice2d": s2,
            "landscape/slice1d": s1}


def test_interpolation_with_many_paths_writes_beside_the_file(tmp_path):
    rng = np.random.default_rng(3)
    groups = landscape_groups(12, rng)  # 12 paths: coloured along a colormap with a colour bar, not a 10-colour cycle
    path = job(tmp_path / "run" / "results.h5", train_members(8, 12, rng), groups)
    assert script("interpolation").main([str(path)]) == 0
    out = tmp_path / "run" / "analysis" / "interpolation"
    assert (out / "interpolation.png").stat().st_size > 0 and (out / "interpolation.pdf").exists()
    table = pd.read_csv(out / "interpolation_barriers.csv")
    init = table[table.path == "initialization -> solution"]
    np.testing.assert_array_equal(init.train_barrier, groups["landscape/interpolation_init"]["train_barrier"])
    assert init.members.tolist()[:2] == ["0", "1"] and len(table) == 12 + 11
    assert table[table.path == "solution -> solution"].members.iloc[0] == "0–1"


def test_landscape_2d_summary_and_figures(tmp_path, capsys):
    rng = np.random.default_rng(4)
    path = job(tmp_path / "run" / "results.h5", train_members(8, 3, rng), landscape_groups(3, rng),
               attrs={"landscape_config": {"slice": {"normalization": "filter"}}})
    assert script("landscape_2d").main([str(path), "--member", "2"]) == 0
    out = tmp_path / "run" / "analysis" / "landscape_2d"
    for name in ("slice2d_m2_train.png", "slice2d_m2_train.pdf", "slice2d_summary.md"):
        assert (out / name).stat().st_size > 0
    table = pd.read_csv(out / "slice2d_summary.csv")
    assert table.center.tolist() == pytest.approx([0.1, 0.2, 0.3]) and table["min"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert script("landscape_2d").main([str(path), "--member", "7"]) == 2
    assert "members [7] not in slice2d" in one_error_line(capsys, "landscape_2d")
    assert script("landscape_2d").main([str(path), "--split", "test"]) == 2
    assert "slice2d has no test_loss" in one_error_line(capsys, "landscape_2d")


def test_minima_histograms_tables_have_blanks_not_sentinels(tmp_path):
    rng = np.random.default_rng(5)
    for j, width in enumerate((5, 25)):
        job(tmp_path / str(j) / "results.h5", train_members(width, 20, rng), overrides=[f"model.width={width}"])
    assert script("minima_histograms").main([str(tmp_path), "--bootstrap", "200"]) == 0
    md = (tmp_path / "analysis" / "minima_histograms" / "minima_by_width.md").read_text()
    assert "nan" not in md.lower()  # width 5 has no published r: a blank cell
    row5 = pd.read_csv(tmp_path / "analysis" / "minima_histograms" / "minima_by_width.csv").iloc[0]
    assert row5.width == 5 and np.isnan(row5.published_r)


def spin_members(n, k, rng):
    e = -1.633 + 1.6 * n ** (-2 / 3) + rng.normal(0, 0.02, k)
    return {"member": np.arange(k), "energy_per_n": e, "N": np.full(k, n), "p": np.full(k, 3), "grad_norm": np.full(k, 1e-8),
            "converged": np.ones(k, bool), "steps": np.full(k, 100), "index": np.zeros(k, int), "disorder_seed": np.zeros(k, int)}


def test_spinglass_writes_beside_the_sweep_and_fits_with_curve_fit(tmp_path):
    spinglass = script("spinglass")
    rng = np.random.default_rng(6)
    for j, n in enumerate((25, 50, 100)):
        job(tmp_path / str(j) / "results.h5", spin_members(n, 30, rng), overrides=[f"spinglass.N={n}"])
    assert spinglass.main([str(tmp_path)]) == 0
    out = tmp_path / "analysis" / "spinglass"
    for name in ("energy_histograms.png", "mean_vs_N.pdf", "spinglass_by_N.md", "fit.csv"):
        assert (out / name).stat().st_size > 0
    table = pd.read_csv(out / "spinglass_by_N.csv")
    fit = pd.read_csv(out / "fit.csv").iloc[0]
    # closed forms of the three least-squares problems (independent of curve_fit)
    x, sem = table.N.to_numpy(float) ** (-2 / 3), table["sem"].to_numpy()
    y = table["mean"].to_numpy() + thresholds(3)[1]
    assert fit.c == pytest.approx(x @ y / (x @ x), rel=1e-12)
    assert fit.c_weighted == pytest.approx((x / sem**2) @ y / ((x / sem**2) @ x), rel=1e-12)
    assert fit.c_weighted_se == pytest.approx(np.sqrt(1 / ((x / sem**2) @ x)), rel=1e-9)
    a = np.stack([np.ones_like(x), x], 1)
    intercept, slope = np.linalg.lstsq(a, table["mean"].to_numpy(), rcond=None)[0]
    assert fit.free_intercept == pytest.approx(intercept, rel=1e-10) and fit.free_c == pytest.approx(slope, rel=1e-10)
    assert fit.chi2 == pytest.approx(np.sum(((table["mean"] - (-thresholds(3)[1] + fit.c_weighted * x)) / sem) ** 2), rel=1e-9)


def test_toy_optimizers_default_output_and_blank_cells(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert script("toy_optimizers").main(["--steps", "10", "--optimizers", "gd_lr0.35", "newton"]) == 0
    out = tmp_path / "analysis" / "toy_optimizers"
    table = pd.read_csv(out / "toy_two_minima_paths.csv").set_index("optimizer")
    assert np.isnan(table.loc["gd_lr0.35", "steps_to_1e-3"])  # never within 1e-3: blank, not -1
    assert table.loc["newton", "steps_to_1e-3"] == 7 and table.loc["newton", "left_window_at"] == 1  # its path leaves the frame
    assert "-1 " not in (out / "toy_two_minima_paths.md").read_text()


def method_job(path, method, depth, rng, correction=True, k=4, epochs=4):
    curves = {"epoch": np.arange(epochs), "step": np.arange(epochs) * 10,
              "train_loss": np.exp(-np.arange(epochs))[None] * (1 + rng.random((k, 1))), "test_error": np.full((k, epochs), 0.2)}
    if method == "dtp":
        for i in range(depth + 1):
            curves[f"cosine_layer{i}"] = 1 - 1e-7 * rng.random((k, epochs)) if i >= depth - 1 else rng.random((k, epochs))
    return job(path, train_members(16, k, rng, depth), {"curves": curves}, cfg=config(16, depth, method, correction))


def test_training_methods_writes_beside_the_sweep_and_notes_tp_equals_dtp_at_depth_one(tmp_path):
    rng = np.random.default_rng(7)
    method_job(tmp_path / "0" / "results.h5", "backprop", 1, rng)
    method_job(tmp_path / "1" / "results.h5", "dtp", 1, rng)
    method_job(tmp_path / "2" / "results.h5", "dtp", 1, rng, correction=False)
    method_job(tmp_path / "3" / "results.h5", "dtp", 2, rng)
    assert script("training_methods").main([str(tmp_path)]) == 0
    out = tmp_path / "analysis" / "training_methods"
    for name in ("endpoint_loss_histograms", "learning_curves", "cosine_to_backprop"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.pdf").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "TP and DTP coincide" in summary and "| tp " in summary and "| dtp " in summary


def test_training_methods_draws_the_penalty_objective_per_stage(tmp_path):
    """A penalty job's E and violation per alternation, one line per stage, the final refit a marker."""
    rng = np.random.default_rng(8)
    stage = np.array([0, 0, 0, 1, 1, 1, 2])
    phase = np.array([0, 1, 1, 0, 1, 1, 2])
    objective = np.array([[2.0, 0.5, 0.3, 0.4, 0.2, 0.1, 0.05]] * 2)
    curves = {"epoch": np.arange(7) / 2, "step": np.array([0, 1, 2, 2, 3, 4, 4]), "train_loss": objective,
              "test_error": np.full((2, 7), 0.1), "objective": objective, "violation": np.array([[0, 0.1, 0.05, 0.05, 0.02, 0.01, 0]] * 2),
              "mu": np.array([1.0, 1, 1, 2, 2, 2, 2]), "stage": stage, "phase": phase}
    job(tmp_path / "0" / "results.h5", train_members(16, 2, rng, 3), {"curves": curves}, cfg=config(16, 3, "penalty"))
    assert script("training_methods").main([str(tmp_path)]) == 0
    out = tmp_path / "analysis" / "training_methods"
    assert (out / "penalty_objective.png").stat().st_size > 0 and (out / "penalty_objective.pdf").stat().st_size > 0
    assert "penalty_objective" in (out / "summary.md").read_text()


# ------------------------------------------------------------------------------ plot helpers

def test_log_axis_ticks_sit_at_the_swept_widths():
    fig, ax = plt.subplots()
    widths = [5, 10, 25, 50, 100, 250]
    ax.plot(widths, [1, 2, 3, 4, 5, 6])
    plots.log_axis(ax, widths, "x")
    assert ax.get_xticks().tolist() == widths
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5", "10", "25", "50", "100", "250"]
    assert len(ax.xaxis.get_minor_locator().tick_values(1, 300)) == 0
    plt.close(fig)


def test_log_ticks_are_round_and_few():
    assert plots.log_ticks(0.747, 5.7).tolist() == [1, 2, 3, 5]
    assert plots.log_ticks(1, 300).tolist() == [1, 3, 10, 30, 100, 300]
    assert plots.log_ticks(0.43, 1.6).tolist() == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert plots.log_ticks(0.8, 0.85).tolist() == pytest.approx([0.8, 0.81, 0.82, 0.83, 0.84, 0.85])  # narrow: even steps
    for lo, hi in [(3.7e-5, 2.2), (0.012, 0.013), (1e-9, 1e3)]:
        ticks = plots.log_ticks(lo, hi)
        assert 2 <= len(ticks) <= 6 and ticks.min() >= lo * (1 - 1e-9) and ticks.max() <= hi * (1 + 1e-9)
        assert all(len(f"{t:.3g}") <= 6 for t in ticks)  # no 3.71771x10^0


def test_colorbar_ticks_are_labelled_round_numbers():
    fig, ax = plt.subplots()
    z = np.geomspace(0.74, 5.7, 100).reshape(10, 10)
    from matplotlib.colors import LogNorm

    cs = ax.contourf(z, levels=np.geomspace(0.74, 5.7, 30), norm=LogNorm(0.74, 5.7))
    bar = plots.log_colorbar(fig, cs, ax, "loss", 0.74, 5.7)
    fig.canvas.draw()
    labels = [t.get_text() for t in bar.ax.get_yticklabels()]
    assert labels == ["1", "2", "3", "5"] and bar.ax.get_ylabel() == "loss"
    plt.close(fig)


def test_histogram_bins_follow_the_sample_size():
    rng = np.random.default_rng(8)
    small, large = rng.normal(size=32), rng.standard_cauchy(size=100_000)
    assert 5 <= len(plots.histogram_edges(small)) - 1 <= 8  # numpy 'auto': Sturges wins for 32 points
    assert len(plots.histogram_edges(large)) - 1 == plots.MAX_BINS  # heavy tails: capped
    assert len(plots.histogram_edges(np.full(5, 2.0))) == 2


def test_noise_floor_keeps_float_noise_flat():
    fig, ax = plt.subplots()
    values = 1 - 1e-7 * np.random.default_rng(9).random(50)
    ax.plot(values)
    assert plots.noise_floor(ax, values, 0.05, "float rounding")
    lo, hi = ax.get_ylim()
    assert hi - lo == pytest.approx(0.05) and lo < values.min() and hi > values.max()
    assert any("float rounding" in t.get_text() for t in ax.texts)
    assert not plots.noise_floor(ax, np.array([0.1, 0.9]), 0.05, "float rounding")
    plt.close(fig)


def test_tables_write_missing_values_as_blanks(tmp_path):
    frame = pd.DataFrame({"a": [1.0, np.nan], "b": pd.array([3, None], dtype="Int64"), "c": ["x", None]})
    plots.save_table(frame, tmp_path, "t")
    md = (tmp_path / "t.md").read_text()
    assert "nan" not in md.lower() and "<NA>" not in md and "None" not in md
    assert (tmp_path / "t.csv").read_text().splitlines()[2] == ",,"


def test_tex_number():
    assert [plots.tex_number(v) for v in (1e-5, 2.5e-5, 0.25, 1e6)] == ["10^{-5}", r"2.5\times10^{-5}", "0.25", "10^{6}"]


def test_results_path_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(plots.AnalysisError, match="no such results file"):
        plots.results_path(tmp_path / "nothing")
    (tmp_path / "d").mkdir()
    with pytest.raises(plots.AnalysisError, match="empty sweep"):
        plots.results_path(tmp_path / "d")
    path = job(tmp_path / "r" / "results.h5", train_members(5, 2, np.random.default_rng(0)))
    bare = store.write_results(tmp_path / "bare.h5", {}, {**store.provenance(), "kind": "job"})
    with pytest.raises(plots.AnalysisError, match="no /members group"):
        plots.results_path(bare)
    assert plots.results_path(path) == path and plots.output_dir(path, "x") == tmp_path / "r" / "analysis" / "x"
    assert plots.output_dir(tmp_path / "d", "x") == tmp_path / "d" / "analysis" / "x"
    assert plots.loss_label(path, "test loss") == "test loss (cross-entropy, nats)"
