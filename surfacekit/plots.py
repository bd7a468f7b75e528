"""Figure and table helpers shared by the analysis scripts (Agg backend; PNG + PDF, CSV + markdown).

Paper-grade defaults in one place, so every analysis gets them the same way:

* axes: log axes ticked at the data's values (``log_axis``: the swept widths, not 6x10^0), no offset
  notation (a cosine of 1 - 1e-7 is not drawn as "1e-7 + 1"), mathtext labels;
* colour bars with a few round, labelled ticks (``log_colorbar``), colours from a colormap for
  ordered or many lines (``sequential_colors``) instead of the repeating 10-colour cycle;
* histograms with bins that follow each sample's size (``step_histograms``: numpy's 'auto' rule,
  the larger of Sturges and Freedman-Diaconis, per sample, capped);
* a stated noise floor (``noise_floor``): an axis is never narrower than the resolution of the
  numbers on it, and the figure says so;
* ``save_figure`` writes with a tight bounding box (no clipped titles or labels);
  ``save_table`` writes missing values as blanks (never a -1 sentinel);
* command-line plumbing: ``AnalysisError`` and ``one_line_errors`` (one ``prog: error: ...`` line
  and exit status 2 for a missing path, an empty sweep or a file without the needed group),
  ``results_path`` and ``output_dir`` (outputs beside the source, in ``analysis/<name>``),
  ``one_job`` (a sweep needs ``--job``) and ``analysis_with`` (the newest analysis holding a group).
"""

from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import h5py  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter, NullLocator  # noqa: E402

from surfacekit import store  # noqa: E402

sns.set_theme(style="whitegrid", context="paper")
plt.rcParams.update({"axes.formatter.useoffset": False, "axes.titlesize": 10, "axes.labelsize": 9,
                     "legend.fontsize": 8, "legend.title_fontsize": 8, "savefig.bbox": "tight"})

# Bins for one sample: numpy's rule, at most this many.
MAX_BINS = 50
# What a stored loss value measures (mean over examples), by ``model.loss``.
LOSS_UNITS = {"cross_entropy": "cross-entropy, nats", "mse": "squared error", "hinge": "multi-class hinge"}


class AnalysisError(ValueError):
    """Input an analysis cannot use; its message is one line naming the path and what is missing."""


# ------------------------------------------------------------------------------ command line

def one_line_errors(prog: str) -> Callable:
    """Decorate an analysis ``main(argv) -> int`` so that bad input prints ``prog: error: MESSAGE`` (one
    line) and returns 2: ``AnalysisError``, ``store.ResultsError`` and ``OSError`` (unreadable files,
    unwritable output folders)."""
    def wrap(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except (AnalysisError, store.ResultsError, OSError) as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                print(f"{prog}: error: {message}", file=sys.stderr)
                return 2
        return run
    return wrap


def results_path(source: str | Path) -> Path:
    """``source`` checked for an analysis: a job's results file or run directory, a sweep directory
    or a sweep file, with readable training members (the loaders read every one of these directly).

    Raises:
        AnalysisError: ``source`` does not exist; it holds no readable jobs (an empty sweep); its
        files have no /members.
    """
    source = Path(source)
    if not source.exists():
        raise AnalysisError(f"{source}: no such results file or directory")
    if source.is_dir() and not (source / store.RESULTS_NAME).exists() and not any(source.glob(f"*/{store.RESULTS_NAME}")):
        raise AnalysisError(f"{source}: no {store.RESULTS_NAME} and no */{store.RESULTS_NAME} here "
                            "(an empty sweep: every job failed or none finished)")
    try:
        members = store.load_members(source)
    except KeyError:
        raise AnalysisError(f"{source}: no /members group: not the results of a training or spin-glass job") from None
    except store.ResultsError as exc:
        raise AnalysisError(str(exc)) from None
    if members.empty:
        raise AnalysisError(f"{source}: holds no jobs (an empty sweep: every job failed or none finished)")
    return source


def output_dir(source: str | Path, name: str, out: str | Path | None = None) -> Path:
    """``out`` if given, else ``analysis/<name>`` beside the source (in it, for a directory)."""
    if out is not None:
        return Path(out)
    source = Path(source)
    return (source if source.is_dir() else source.parent) / "analysis" / name


def one_job(source: str | Path, job: str | None) -> str:
    """The job an analysis of a single job reads: ``job``, checked, or the only job of ``source``.

    Raises:
        AnalysisError: ``source`` (a sweep) holds several jobs and ``job`` is None (the message lists
        them and names ``--job``), or it has no job ``job``.
    """
    names = store.list_jobs(source)
    if job is None:
        if len(names) != 1:
            raise AnalysisError(f"{source}: holds {len(names)} jobs {names}; name one with --job NAME "
                                f"(or pass that job's run directory)")
        return names[0]
    if job not in names:
        raise AnalysisError(f"{source}: no job {job!r}; its jobs are {names}")
    return job


def analysis_with(source: str | Path, job: str, task: str, group: str) -> store.AnalysisRef | None:
    """The newest analysis of ``task`` of job ``job`` that holds ``/group`` (None when none does,
    e.g. a schema-1 file whose group sits in the training file): an analysis that computed only
    other parts of the task does not hide it."""
    col = store.collect(source)
    ref = col.jobs.get(job)
    for analysis in store.analyses_of(col, ref, task) if ref is not None else []:
        with h5py.File(analysis.file, "r") as f:
            if f"{analysis.group}/jobs/{job}/{group}".lstrip("/") in f:
                return analysis
    return None


def has_group(path: str | Path, group: str, job: str | None = None) -> bool:
    """Whether job ``job`` (or the only job) of a results file has ``/group``."""
    try:
        store.load_group(path, group, job)
    except store.ResultsError:
        return False
    return True


def loss_label(path: str | Path, what: str) -> str:
    """``what`` with the loss the (first) job trained, e.g. 'test loss (cross-entropy, nats)'."""
    try:
        job = store.list_jobs(path)[0]
        loss = store.load_config(path, job or None)["model"]["loss"]
    except (store.ResultsError, IndexError, KeyError, TypeError):
        return what
    return f"{what} ({LOSS_UNITS.get(loss, loss)})"


def h5_attr(path: str | Path, name: str, default=None):
    """A root attribute of a results file (``default`` if absent)."""
    with h5py.File(path, "r") as f:
        return f.attrs.get(name, default)


# ----------------------------------------------------------------------------------- writing

def save_figure(fig: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``name.png`` (200 dpi) and ``name.pdf`` into ``out_dir`` with a tight bounding box; close the figure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    if fig.get_layout_engine() is None:
        with warnings.catch_warnings():  # 3D axes and colour bars are not "compatible" with tight_layout; bbox still is
            warnings.simplefilter("ignore", UserWarning)
            fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=200, bbox_inches="tight")
    plt.close(fig)
    return paths


def save_table(frame: pd.DataFrame, out_dir: Path, name: str, floatfmt: str = ".4g") -> list[Path]:
    """Write ``name.csv`` and ``name.md`` (a markdown table) into ``out_dir``; missing values are blank."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    frame.to_csv(csv, index=False)
    blanks = frame.astype(object).where(frame.notna(), None)  # tabulate leaves None blank, prints NaN as "nan"
    md.write_text(blanks.to_markdown(index=False, floatfmt=floatfmt, missingval="") + "\n")
    return [csv, md]


# -------------------------------------------------------------------------------------- axes

def _number(value: float) -> str:
    return f"{value:.3g}"


def tex_number(value: float) -> str:
    """A number as mathtext (without the $ signs): 0.25, 2\\times10^{-5}, 10^{6}."""
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return _number(value)
    mantissa, exponent = f"{value:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    power = f"10^{{{int(exponent)}}}"
    return power if mantissa == "1" else ("-" + power if mantissa == "-1" else f"{mantissa}\\times{power}")


def log_axis(ax: plt.Axes, values: Sequence[float], axis: str = "x", ticks: str = "values", max_ticks: int = 10) -> None:
    """Log scale on ``axis`` with plain-number tick labels (no 6x10^0, no minor labels).

    ``ticks="values"``: ticks at the distinct positive ``values`` themselves (e.g. the swept widths),
    evenly thinned to at most ``max_ticks``; ``ticks="round"``: round values spanning their range
    (:func:`log_ticks`), for continuous data such as losses.
    """
    v = np.asarray([u for u in np.ravel(values) if np.isfinite(u) and u > 0], dtype=float)
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    if ticks == "values":
        at = np.unique(v)
        if len(at) > max_ticks:
            at = at[np.unique(np.round(np.linspace(0, len(at) - 1, max_ticks)).astype(int))]
    else:  # round values over what the axis shows (the data plus autoscale margins)
        lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
        at = log_ticks(max(lo, v.min() / 2) if len(v) else lo, min(hi, v.max() * 2) if len(v) else hi)
    target.set_major_locator(FixedLocator(at))
    target.set_major_formatter(FuncFormatter(lambda u, _: _number(u)))
    target.set_minor_locator(NullLocator())
    target.set_minor_formatter(NullFormatter())


def log_ticks(vmin: float, vmax: float, max_ticks: int = 6) -> np.ndarray:
    """Round ticks within [vmin, vmax] of a log axis, at most ``max_ticks``: the finest of m x 10^k for
    m in 1..9, (1, 2, 3, 5), (1, 2, 5), (1, 3), (1) that fits; evenly spaced round values when fewer
    than three of those fall inside (a narrow range); at least the two ends (3 digits)."""
    if not (np.isfinite(vmin) and np.isfinite(vmax) and 0 < vmin <= vmax):
        return np.asarray([], dtype=float)
    inside = lambda t: t[(t >= vmin * (1 - 1e-9)) & (t <= vmax * (1 + 1e-9)) & (t > 0)]  # noqa: E731
    decades = np.arange(np.floor(np.log10(vmin)), np.ceil(np.log10(vmax)) + 1)
    for mantissas in (range(1, 10), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):
        ticks = inside(np.asarray([m * 10.0**d for d in decades for m in mantissas]))
        if len(ticks) <= max_ticks:
            break
    if len(ticks) > max_ticks:
        ticks = ticks[:: int(np.ceil(len(ticks) / max_ticks))]
    if len(ticks) < 3:
        even = inside(MaxNLocator(nbins=max_ticks - 1, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax))
        ticks = even if len(even) > len(ticks) else ticks
    if len(ticks) < 2:
        ticks = np.unique(np.concatenate([ticks, [float(_number(vmin)), float(_number(vmax))]]))
    return ticks


def log_colorbar(fig: plt.Figure, mappable, ax: plt.Axes, label: str, vmin: float, vmax: float):
    """A colour bar for a log-scaled mappable with a few round, labelled ticks (:func:`log_ticks`)."""
    cbar = fig.colorbar(mappable, ax=ax, ticks=log_ticks(vmin, vmax))
    cbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _number(v)))
    cbar.ax.yaxis.set_minor_locator(NullLocator())
    cbar.set_label(label)
    return cbar


def sequential_colors(n: int, cmap: str = "viridis") -> list[tuple[float, ...]]:
    """``n`` colours along a colormap (its too-light end left out), for ordered groups or many lines."""
    return [plt.get_cmap(cmap)(v) for v in np.linspace(0.0, 0.85, max(n, 1))][:n]


def noise_floor(ax: plt.Axes, values: np.ndarray, span: float, what: str, axis: str = "y") -> bool:
    """Keep ``axis`` at least ``span`` wide around the finite ``values``, so differences below the
    numbers' resolution are not magnified to fill the panel, and state it in the panel (``what``
    names the cause, e.g. "float32 rounding"). Returns whether the floor was applied."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v) or np.ptp(v) >= span:
        return False
    centre = 0.5 * (v.min() + v.max())
    (ax.set_ylim if axis == "y" else ax.set_xlim)(centre - span / 2, centre + span / 2)
    ax.text(0.02, 0.97, f"spread {np.ptp(v):.1g} < {span:g}: {what}", transform=ax.transAxes, fontsize=7,
            color="0.35", va="top")
    return True


# -------------------------------------------------------------------------------- histograms

def histogram_edges(sample: np.ndarray, max_bins: int = MAX_BINS) -> np.ndarray:
    """Bin edges for one sample: numpy's 'auto' rule (the larger count of Sturges and Freedman-Diaconis;
    about 6 bins for 32 points), at most ``max_bins`` bins; one bin around a constant sample."""
    x = np.asarray(sample, dtype=float)
    x = x[np.isfinite(x)]
    if not len(x):
        return np.asarray([0.0, 1.0])
    if np.ptp(x) == 0:
        half = 0.5 * max(abs(x[0]) * 1e-3, 1e-12)
        return np.asarray([x[0] - half, x[0] + half])
    edges = np.histogram_bin_edges(x, bins="auto")
    if len(edges) - 1 > max_bins:
        edges = np.linspace(x.min(), x.max(), max_bins + 1)
    return edges


def step_histograms(ax: plt.Axes, samples: Mapping[str, np.ndarray], colors: Sequence, max_bins: int = MAX_BINS,
                    log_x: bool = False) -> None:
    """Density histograms (outlines) of several samples on one axis, each binned by its own size
    (:func:`histogram_edges`), labelled with the keys and sample sizes. ``log_x``: binned in log10 of
    the (positive) values on a log axis, density per decade."""
    for (label, sample), color in zip(samples.items(), colors):
        x = np.asarray(sample, dtype=float)
        x = x[np.isfinite(x) & (x > 0)] if log_x else x[np.isfinite(x)]
        if not len(x):
            continue
        u = np.log10(x) if log_x else x
        density, edges = np.histogram(u, bins=histogram_edges(u, max_bins), density=True)
        ax.stairs(density, 10.0**edges if log_x else edges, color=color, lw=1.4, label=f"{label} (n={len(x)})")
    if log_x:
        ax.set_xscale("log")
