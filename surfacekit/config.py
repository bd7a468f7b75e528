"""The one configuration boundary: every composed job config is checked here before any work.

:func:`validate` checks every key of the composed config (top level, the data, model, optimizer and
trainer groups, and the selected task's settings) and the ``+`` overrides, and raises
:class:`ConfigError` with one line naming the key, the value and what is expected. Values that are
legal but dubious produce warnings (returned, printed and stored in the results file). Checks that
need the data and the built network (a batch larger than the training set, a batch of one with batch
norm) are in :func:`validate_with_data`.

Defaults live in the YAML files under ``conf/`` only; :func:`group_defaults` reads one option's
file for direct (non-Hydra) use. The rules are written out here rather than as Hydra structured
configs because the messages must name the expectation in the field's terms (e.g. "an integer >= 1
or null for full batch"), and many checks span keys (trainer and model, optimizer and batch size).
"""

from __future__ import annotations

import difflib
import math
import os
from typing import Any, Callable, Iterable, Mapping

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from surfacekit.curvature.index import DENSE_EIG_LIMIT
from surfacekit.models import ACTIVATION_NAMES, INITS, LOSSES, MAXOUT
from surfacekit.optim import OPTIMIZERS, SCHEDULES

DTYPES = {"float32": torch.float32, "float64": torch.float64}
TASKS = ("train", "spectrum", "critical", "landscape", "spinglass", "sharpness", "certify")
POSTHOC_TASKS = ("spectrum", "critical", "landscape", "sharpness", "certify")
DATA_SOURCES = ("digits", "mnist1d", "teacher", "mnist", "cifar10", "cifar100")
TRAINERS = ("backprop", "dtp", "penalty", "prong", "kfac", "hessian_free", "scg")
# Trainers that take any module (``model._target_``: cnn, resnet, a user's class); the others are MLP-only.
MODULE_TRAINERS = ("backprop",)
# Methods of issue 18: natural gradient (prong, kfac) and full-batch second-order (hessian_free, scg).
NATURAL_GRADIENT = ("prong", "kfac")
FULL_BATCH_SECOND_ORDER = ("hessian_free", "scg")
FINDERS = ("newton_mr", "gradnorm", "newton", "saddle_free", "levenberg_marquardt")
# Free-form mappings where ``+key=value`` may add entries (everything else exists in the YAML).
FREE_FORM = ("hydra.", "critical.options.", "model.args.")
_MISSING = object()


class ConfigError(ValueError):
    """An invalid config value; the message names the key, the value and what is expected."""


def show(value: Any) -> str:
    """A value as it is written on the command line: true, null, 0.5, adam, [0.9, 0.99]."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _fail(key: str, value: Any, expected: str) -> None:
    raise ConfigError(f"{key}={show(value)} is invalid: expected {expected}")


# ----------------------------------------------------------------------------------- value checks

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int | None = None, hi: int | None = None, null: bool = False) -> Callable[[Any], str | None]:
    """A check: an integer in [lo, hi] (or null); returns the expectation when it fails."""
    text = "an integer" + (f" >= {lo}" if lo is not None else "") + (f" <= {hi}" if hi is not None else "")
    text += " or null" if null else ""

    def check(v: Any) -> str | None:
        if v is None and null:
            return None
        ok = _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)
        return None if ok else text

    return check


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
           null: bool = False) -> Callable[[Any], str | None]:
    """A check: a finite number in the interval (open or closed ends), or null."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    text = "a finite number" + (" " + " and ".join(parts) if parts else "") + (" or null" if null else "")

    def check(v: Any) -> str | None:
        if v is None and null:
            return None
        if not _is_number(v):
            return text
        if lo is not None and (v <= lo if lo_open else v < lo):
            return text
        if hi is not None and (v >= hi if hi_open else v > hi):
            return text
        return None

    return check


def choice(options: Iterable[Any], null: bool = False) -> Callable[[Any], str | None]:
    options = list(options)
    text = f"one of {options}" + (" or null" if null else "")
    return lambda v: None if (v is None and null) or v in options else text


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def pair(element: Callable[[Any], str | None], increasing: bool = False) -> Callable[[Any], str | None]:
    text = "a list of two values, each " + (element(float("nan")) or "valid") + (" (first < second)" if increasing else "")

    def check(v: Any) -> str | None:
        if not isinstance(v, (list, tuple, ListConfig)) or len(v) != 2 or any(element(x) for x in v):
            return text
        return text if increasing and not v[0] < v[1] else None

    return check


def int_list(lo: int = 0, null: bool = True, nonempty: bool = True) -> Callable[[Any], str | None]:
    text = f"{'null or ' if null else ''}a {'non-empty ' if nonempty else ''}list of integers >= {lo}"

    def check(v: Any) -> str | None:
        if v is None:
            return None if null else text
        if _is_int(v) and v >= lo:
            return None  # a single id is accepted as a list of one
        if not isinstance(v, (list, tuple, ListConfig)) or (nonempty and not v) or any(not _is_int(x) or x < lo for x in v):
            return text
        return None

    return check


def text_value(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else "a non-empty string"


def get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def _value(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=True)
    except Exception:  # noqa: BLE001 - omegaconf's MissingMandatoryValue: report as missing
        return "???"


def _check(cfg: DictConfig, rules: Mapping[str, Callable[[Any], str | None]], prefix: str = "") -> None:
    for key, rule in rules.items():
        full = f"{prefix}{key}"
        value = _value(cfg, full)
        if value is _MISSING:
            continue  # not part of this option (validated by the option's own rules)
        if value == "???":
            raise ConfigError(f"{full} is required (no default): set {full}=...")
        expected = rule(value)
        if expected:
            _fail(full, value, expected)


# ----------------------------------------------------------------------------------- the rules

TOP = {
    "task": choice(TASKS),
    "seed": integer(0),
    "dtype": choice(DTYPES),
    "threads": integer(1, null=True),
    "progress": boolean,
    "chunk_size": integer(1, null=True),
    "resume": boolean,
    "memory_limit_gb": number(0, lo_open=True, null=True),
    "objective": choice(("trained", "data")),
    "bn_mode": choice(("batch", "eval")),
    "device": lambda v: None if isinstance(v, str) and (v == "cpu" or v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit()))
    else "cpu, cuda or cuda:N",
}
POPULATION = {"size": integer(1), "first_member": integer(0), "shared_init": boolean,
              "init_from": lambda v: None if v is None or (isinstance(v, str) and v.strip()) else "null or a path",
              "init_point": choice(("final", "certify")), "transform": choice(("none", "widen", "deepen")),
              "transform_layer": integer(0), "new_width": integer(1, null=True), "transform_noise": number(0),
              "transform_seed": integer(0)}
DATA_COMMON = {"name": choice(DATA_SOURCES), "standardize": boolean, "split_seed": integer(0),
               "train_size": integer(1, null=True), "test_size": integer(1, null=True)}
DATA = {
    "digits": {},
    "mnist1d": {"num_samples": integer(20)},
    "teacher": {"input_dim": integer(1), "teacher_width": integer(1), "outputs": integer(1), "noise": number(0),
                "classification": boolean, "teacher_seed": integer(0)},
    "mnist": {"path": text_value, "downsample": integer(1, null=True)},
    "cifar10": {"path": text_value, "downsample": integer(1, null=True), "grayscale": boolean},
    "cifar100": {"path": text_value, "downsample": integer(1, null=True), "grayscale": boolean,
                 "labels": choice(("fine", "coarse"))},
}
MODEL = {"activation": choice(ACTIVATION_NAMES), "maxout_pieces": integer(2), "init": choice(INITS),
         "loss": choice(LOSSES), "bias": boolean, "batch_norm": boolean, "residual": boolean,
         "init_std": number(0, lo_open=True),
         # the built-in modules (model=cnn, resnet) and model=module
         "_target_": text_value, "kernel_size": lambda v: None if _is_int(v) and v >= 1 and v % 2 else "an odd integer >= 1",
         "pool": choice(("max", "avg", "none")), "blocks": integer(1),
         "args": lambda v: None if isinstance(v, (dict, DictConfig)) else "a mapping of constructor arguments"}
OPTIMIZER_COMMON = {"name": choice(OPTIMIZERS), "lr": number(0, lo_open=True), "schedule": choice(SCHEDULES),
                    "decay_epochs": number(0, lo_open=True), "weight_decay": number(0)}
OPTIMIZER = {
    "sgd": {},
    "momentum": {"momentum": number(0, 1, hi_open=True)},
    "nesterov": {"momentum": number(0, 1, lo_open=True, hi_open=True)},
    "rprop": {"etas": pair(number(0, lo_open=True), increasing=True), "step_sizes": pair(number(0, lo_open=True), increasing=True)},
    "adagrad": {"eps": number(0, lo_open=True)},
    "rmsprop": {"alpha": number(0, 1, hi_open=True), "eps": number(0, lo_open=True), "momentum": number(0, 1, hi_open=True),
                "centered": boolean},
    "adadelta": {"rho": number(0, 1, hi_open=True), "eps": number(0, lo_open=True)},
    "adam": {"betas": pair(number(0, 1, hi_open=True)), "eps": number(0, lo_open=True)},
    "adamax": {"betas": pair(number(0, 1, hi_open=True)), "eps": number(0, lo_open=True)},
}
TRAINER_COMMON = {"method": choice(TRAINERS), "epochs": integer(0), "batch_size": integer(1, null=True),
                  "eval_every": integer(1), "divergence_loss": number(0, lo_open=True), "snapshots": boolean}
TRAINER = {
    "backprop": {"grad_tol": number(0), "coupling": choice(("none", "easgd", "eamsgd", "averaging")), "tau": integer(1),
                 "beta": number(0), "delta": number(0, 1, hi_open=True),
                 "communication": choice(("synchronous", "round_robin")), "track_sharpness": integer(0),
                 "sharpness_tol": number(0, lo_open=True), "sharpness_max_hvps": integer(1), "fused_step": boolean},
    "dtp": {"difference_correction": boolean, "target_step": number(0, lo_open=True),
            "target_reduction": choice(("sum", "mean")), "noise_std": number(0), "forward_lr": number(0, lo_open=True),
            "inverse_lr": number(0, lo_open=True), "schedule": choice(("passes", "interleaved")),
            "optimizer.decay": number(0, 1, hi_open=True), "optimizer.momentum": number(0, 1, hi_open=True),
            "optimizer.eps": number(0, lo_open=True), "optimizer.centered": boolean},
    "penalty": {"mu0": number(0, lo_open=True), "mu_factor": number(1), "stages": integer(1), "alternations": integer(1),
                "w_steps": integer(0), "z_steps": integer(0), "step_init": number(0, lo_open=True), "step_grow": number(1),
                "armijo": number(0, 1, lo_open=True, hi_open=True), "max_backtracks": integer(1), "weight_decay": number(0),
                "refit_steps": integer(0), "collapse_spread": number(0), "collapse_margin": number(0, 1),
                "w_solver": choice(("gauss_newton", "gradient")), "gn_steps": integer(0), "damping": number(0)},
    "prong": {"grad_tol": number(0), "reparam_every": integer(1), "stats_samples": integer(2, null=True),
              "epsilon": number(0, lo_open=True)},
    "kfac": {"grad_tol": number(0), "update_every": integer(1), "stats_samples": integer(1, null=True),
             "damping": number(0, lo_open=True), "targets": choice(("sampled", "exact"))},
    "hessian_free": {"grad_tol": number(0), "curvature": choice(("gauss_newton", "hessian")),
                     "damping": number(0, lo_open=True), "cg_max_iter": integer(1), "cg_tol": number(0, lo_open=True),
                     "warm_start": number(0, 1), "backtrack_growth": number(1, lo_open=True),
                     "armijo": number(0, 1, lo_open=True, hi_open=True), "armijo_shrink": number(0, 1, lo_open=True, hi_open=True),
                     "max_line_search": integer(0), "weight_decay": number(0)},
    "scg": {"grad_tol": number(0), "lambda_init": number(0), "restart_every": integer(1, null=True),
            "weight_decay": number(0)},
}
SPECTRUM = {"members": int_list(0), "top_k": integer(1), "bottom_k": integer(1), "tol": number(0, lo_open=True),
            "max_steps": integer(1), "threshold": number(hi=0, null=True),
            "relative_threshold": number(0, lo_open=True),
            "index_method": choice(("auto", "dense", "inertia", "lanczos", "estimate")),
            "dense_limit": integer(1, null=True), "index_cap": integer(1), "trace_probes": integer(2),
            "density_probes": integer(1), "density_steps": integer(2), "batch_size": integer(1)}
CRITICAL = {"members": int_list(0), "starts": integer(1), "seed": integer(0), "cutoff": number(0, lo_open=True),
            "criterion": choice(("scale_free", "absolute")), "rtol": number(0, lo_open=True), "htol": number(0),
            "flat_threshold": number(0, 1, lo_open=True), "stol": number(0, lo_open=True), "compute_index": boolean,
            "store_theta": boolean,
            "index.threshold": number(hi=0, null=True), "index.relative_threshold": number(0, lo_open=True),
            "index.method": choice(("auto", "dense", "inertia", "lanczos")), "index.dense_limit": integer(1, null=True),
            "index.cap": integer(1),
            "finders": lambda v: None if isinstance(v, (list, ListConfig)) and v and all(f in FINDERS for f in v)
            else f"a non-empty list from {list(FINDERS)}"}
LANDSCAPE = {"members": int_list(0), "batch_points": integer(1, null=True),
             "kind": lambda v: None if (v in ("interpolation", "slice1d", "slice2d")) or (
                 isinstance(v, (list, ListConfig)) and v and all(k in ("interpolation", "slice1d", "slice2d") for k in v))
             else "one or a list of ['interpolation', 'slice1d', 'slice2d']",
             "splits": lambda v: None if isinstance(v, (list, ListConfig)) and v and all(s in ("train", "test") for s in v)
             else "a non-empty list of train and test",
             "interpolation.num": integer(2), "interpolation.lo": number(hi=0), "interpolation.hi": number(1),
             "interpolation.init": boolean,
             "interpolation.pairs": lambda v: None if v in ("adjacent", "all", "none", None) or (
                 isinstance(v, (list, ListConfig)) and all(isinstance(p, (list, ListConfig)) and len(p) == 2
                                                           and all(_is_int(m) for m in p) for p in v))
             else "adjacent, all, none or a list of [a, b] member-id pairs",
             "slice.num": integer(1), "slice.lo": number(), "slice.hi": number(),
             "slice.normalization": choice(("filter", "layer", "none")), "slice.bias_bn": choice(("zero", "include")),
             "slice.seed": integer(0, null=True), "slice.orthogonalize": boolean, "slice.store_directions": boolean}
SPINGLASS = {"N": integer(2), "p": integer(3), "starts": integer(1), "disorder_seed": integer(0, null=True),
             "method": choice(("gd", "sgd")), "lr": number(0, lo_open=True), "lr_decay": number(0),
             "tol": number(0, lo_open=True), "max_steps": integer(1), "sgd.tensors": integer(1), "sgd.steps": integer(0),
             "sgd.lr": number(0, lo_open=True), "sgd.lr_decay": number(0), "index_max_n": integer(0),
             "index_rel_threshold": number(0, lo_open=True), "chunk_starts": integer(1)}
SHARPNESS = {"members": int_list(0), "tol": number(0, lo_open=True), "max_steps": integer(1), "trace_probes": integer(2),
             "keskar_epsilon": number(0, lo_open=True), "keskar_iterations": integer(1), "adaptive_eta": number(0),
             "pac_bayes_drop": number(0, 1, lo_open=True), "pac_bayes_epsilon": number(0), "pac_bayes_draws": integer(1),
             "pac_bayes_iterations": integer(1), "seed": integer(0)}
CERTIFY = {"members": int_list(0), "cutoff": number(0, lo_open=True), "relative_cutoff": number(0, lo_open=True),
           "margin": number(0, 1, lo_open=True), "max_iter": integer(1), "memory": integer(1),
           "newton": choice(("trust-ncg", "trust-krylov", "none")), "newton_max_iter": integer(1),
           "max_distance": number(0, lo_open=True), "flat_threshold": number(0, 1, lo_open=True), "store_theta": boolean,
           "index.threshold": number(hi=0, hi_open=True, null=True), "index.relative_threshold": number(0, lo_open=True),
           "index.method": choice(("auto", "dense", "inertia", "lanczos")),
           "index.dense_limit": integer(1, DENSE_EIG_LIMIT, null=True),  # auto's batched eigvalsh path: P <= 4,000
           "index.cap": integer(1), "index.tol": number(0, 1, lo_open=True, hi_open=True), "batch_size": integer(1)}
TASK_RULES = {"spectrum": SPECTRUM, "critical": CRITICAL, "landscape": LANDSCAPE, "spinglass": SPINGLASS,
              "sharpness": SHARPNESS, "certify": CERTIFY}
GROUPS = ("data", "model", "optimizer", "trainer", "population")


# ----------------------------------------------------------------------------------- validation

def flat_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every value in a config (mappings expanded, lists kept whole)."""
    if isinstance(node, (DictConfig, dict)):
        out = []
        for k, v in (node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()):
            out += flat_keys(v, f"{prefix}{k}.") if isinstance(v, (DictConfig, dict)) else [f"{prefix}{k}"]
        return out
    return [prefix.rstrip(".")]


def nearest_keys(key: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known dotted keys closest to ``key`` (full path or last component)."""
    known = list(known)
    close = difflib.get_close_matches(key, known, n=n, cutoff=0.6)
    leaf = key.rsplit(".", 1)[-1]
    close += [k for k in known if k.rsplit(".", 1)[-1] == leaf and k not in close]
    return close[:n]


def mapping_hint(key: str) -> str | None:
    """For a free-form mapping named whole (``model.args``): how to set its entries; else None."""
    if f"{key}." not in FREE_FORM:
        return None
    return (f"{key} is a mapping that exists already: add entries with +{key}.KEY=VALUE or replace it whole "
            f"with ++{key}={{KEY: VALUE}}")


def check_overrides(overrides: Iterable[str], cfg: DictConfig) -> None:
    """Reject overrides that add keys the config does not have (``+key``: typos; every setting exists
    in the YAML already) or delete settings (``~key``: every setting needs a value). Free-form maps
    (``hydra.``, ``critical.options.``) pass; ``++key`` is checked by the command line's pre-check
    (it needs the config without it). Raises ConfigError naming the nearest valid keys."""
    known = flat_keys(cfg)
    known += sorted({k.split(".", 1)[0] for k in known})
    for text in overrides:
        if not text.startswith(("+", "~")) or text.startswith("++"):
            continue
        key = text.lstrip("+~").partition("=")[0]
        if key.startswith(FREE_FORM) or key.startswith("hydra/") or key == "hydra":
            continue
        if text.startswith("~"):
            raise ConfigError(f"{text}: deleting a setting is not supported (every setting needs a value); "
                              f"set it instead, e.g. {key}=VALUE")
        if mapping_hint(key):
            raise ConfigError(f"{text}: {mapping_hint(key)}")
        others = [k for k in known if k != key]
        hint = nearest_keys(key, others)
        raise ConfigError(f"{text}: no such setting{'; did you mean ' + ' or '.join(hint) + '?' if hint else ''} "
                          "(every setting exists already: drop the '+')")


def check_forced(overrides: Iterable[str], base: DictConfig) -> None:
    """``++key=value`` must name a setting that exists in ``base`` (the config composed without the
    ``++`` overrides); ConfigError with the nearest keys otherwise."""
    known = flat_keys(base)
    for text in overrides:
        if not text.startswith("++"):
            continue
        key = text[2:].partition("=")[0]
        if key.startswith(FREE_FORM) or key.startswith("hydra"):
            continue
        if OmegaConf.select(base, key, default=_MISSING) is _MISSING:
            hint = nearest_keys(key, known + sorted({k.split(".", 1)[0] for k in known}))
            raise ConfigError(f"{text}: no such setting{'; did you mean ' + ' or '.join(hint) + '?' if hint else ''}")


def _mapping(cfg: DictConfig, group: str) -> None:
    value = _value(cfg, group)
    if value is _MISSING or OmegaConf.is_dict(value):
        return
    if group == "population":
        raise ConfigError(f"population={show(value)}: population is a group of settings, not a value; "
                          f"did you mean population.size={show(value)}?")
    raise ConfigError(f"{group}={show(value)}: {group} is a group of settings; choose an option with {group}=NAME "
                      f"or set a field with {group}.FIELD=VALUE")


def validate(cfg: DictConfig, overrides: Iterable[str] = ()) -> list[str]:
    """Check a composed job config before any work; return warnings (legal but dubious values).

    Raises ConfigError with one line naming the key, the value and the expectation.
    """
    for group in GROUPS + tuple(TASK_RULES):
        _mapping(cfg, group)
    check_overrides(overrides, cfg)
    _check(cfg, TOP)
    task = cfg.task
    overrides = list(overrides)
    if task in TASK_RULES:
        _check(cfg, TASK_RULES[task], f"{task}.")
    if task == "spectrum" and get(cfg, "spectrum.index_method") == "estimate" and get(cfg, "spectrum.density_probes") < 2:
        _fail("spectrum.density_probes", get(cfg, "spectrum.density_probes"),
              "at least 2 with spectrum.index_method=estimate (its interval needs a sampling error)")
    if task in POSTHOC_TASKS:
        if not get(cfg, "source"):
            raise ConfigError(f"source is required for task={task}: source=RESULTS_FILE, RUN_DIR or SWEEP_DIR")
        _no_training_overrides(task, overrides)
    if task == "critical":
        _check_finder_options(cfg)
    if task == "landscape":
        _check_landscape_grids(cfg)
    if task != "train":
        return _zero_thresholds(cfg, task)
    return validate_training(cfg, overrides)


def _check_landscape_grids(cfg: DictConfig) -> None:
    """The slice range is not empty; the interpolation grid has >= 2 points in [0, 1], where barriers
    and monotonicity are measured (``interpolation.num=2`` on [-0.5, 1.5] has none)."""
    from surfacekit.landscape import interpolation_alphas

    if not get(cfg, "landscape.slice.hi") > get(cfg, "landscape.slice.lo"):
        _fail("landscape.slice.hi", get(cfg, "landscape.slice.hi"), f"> landscape.slice.lo={get(cfg, 'landscape.slice.lo')}")
    num, lo, hi = (get(cfg, f"landscape.interpolation.{k}") for k in ("num", "lo", "hi"))

    def inside(n: int) -> int:
        alphas = interpolation_alphas(n, lo, hi)
        return int(((alphas >= 0) & (alphas <= 1)).sum())

    if inside(num) < 2:
        enough = next(n for n in range(num + 1, 100 * num + 1000) if inside(n) >= 2)
        _fail("landscape.interpolation.num", num, f"a grid on [lo, hi] = [{show(lo)}, {show(hi)}] with at least 2 "
              f"points in [0, 1], where barriers and monotonicity are measured (it has {inside(num)}; num >= {enough})")


def _zero_thresholds(cfg: DictConfig, task: str) -> list[str]:
    """An index threshold of exactly 0 is legal (as in ``curvature.index``) but counts eigenvalues that
    are zero up to rounding (every flat direction of a network) as negative: a warning."""
    keys = {"spectrum": "spectrum.threshold", "critical": "critical.index.threshold"}
    key = keys.get(task)
    if key and get(cfg, key) is not None and float(get(cfg, key)) == 0:
        return [f"{key}=0 counts eigenvalues that are zero up to rounding as negative; the default (null) uses "
                f"-relative_threshold x max|lambda|"]
    return []


TRAINING_GROUPS = ("data", "model", "optimizer", "trainer", "population")
OWN_OPTIMIZER = ("dtp", "penalty", "hessian_free", "scg")  # trainers that do not use the optimizer group
# Settings that act only with another setting on (a warning names them when given without it).
COUPLING_KEYS = ("trainer.tau", "trainer.beta", "trainer.delta", "trainer.communication")
TRACKING_KEYS = ("trainer.sharpness_tol", "trainer.sharpness_max_hvps")
HIDDEN_LAYER_KEYS = ("model.width", "model.activation", "model.maxout_pieces", "model.batch_norm", "model.residual")


def _override_keys(overrides: Iterable[str]) -> list[str]:
    return [o.lstrip("+~").partition("=")[0] for o in overrides]


def _no_training_overrides(task: str, overrides: list[str]) -> None:
    """A post-hoc task analyses its source as it was trained: training settings given on its command
    line would change nothing, so they are refused."""
    for key in _override_keys(overrides):
        if key.split(".", 1)[0] in TRAINING_GROUPS or key in ("dtype",):
            raise ConfigError(f"{key} has no effect on task={task}: it analyses each source job with the settings "
                              "that job was trained with; drop it (objective, bn_mode and the task's own settings apply)")


def _check_finder_options(cfg: DictConfig) -> None:
    """``critical.options.<finder>.<name>``: a keyword of that finder with a sensible value."""
    import inspect

    from surfacekit.critical import FINDERS as FINDER_FUNCTIONS

    options = get(cfg, "critical.options") or {}
    for finder, values in options.items():
        if finder not in FINDER_FUNCTIONS:
            _fail(f"critical.options.{finder}", values, f"options of one of {list(FINDER_FUNCTIONS)}")
        params = {p.name: p.default for p in inspect.signature(FINDER_FUNCTIONS[finder]).parameters.values()
                  if p.kind == p.KEYWORD_ONLY}
        for name, value in (values or {}).items():
            key = f"critical.options.{finder}.{name}"
            if name not in params:
                close = nearest_keys(name, list(params))
                raise ConfigError(f"{key}: {finder} has no option {name}" + (f"; did you mean {' or '.join(close)}?" if close
                                                                           else f"; its options are {sorted(params)}"))
            default = params[name]
            if name == "optimizer":
                expected = choice(("lbfgs", "gd"))(value)
            elif name.endswith(("max_iter", "maxiter", "memory", "krylov_dim", "max_rejections")):
                expected = integer(1, null=default is None)(value)
            else:
                expected = number(0, lo_open=True)(value)
            if expected:
                _fail(key, value, expected)


def validate_training(cfg: DictConfig, overrides: Iterable[str] = ()) -> list[str]:
    """The data, model, optimizer, trainer and population keys of a training job, and their
    combinations; returns warnings. ``overrides`` (the command line) lets it name settings that
    were given but have no effect. With ``population.init_from`` the model is derived from the source
    (:func:`validate_init_from`) and the later rules see the derived model."""
    warnings: list[str] = []
    keys = _override_keys(overrides)
    method_name = get(cfg, "trainer.method")
    if method_name in OWN_OPTIMIZER:
        given = [k for k in keys if k == "optimizer" or k.startswith("optimizer.")]
        if given:
            warnings.append(f"{', '.join(given)} has no effect with trainer={method_name}: it sets its own steps "
                            "(see its trainer.* settings)")
    for condition, settings, reason in (
            (get(cfg, "trainer.coupling", "none") in (None, "none"), COUPLING_KEYS, "trainer.coupling=none (independent members)"),
            (not get(cfg, "trainer.track_sharpness", 0), TRACKING_KEYS, "trainer.track_sharpness=0 (no tracking)"),
            (get(cfg, "model.widths") is None and get(cfg, "model.depth") == 0 and not get(cfg, "model._target_"),
             HIDDEN_LAYER_KEYS, "model.depth=0 (no hidden layer: logistic or linear regression)")):
        given = [k for k in keys if k in settings]
        if condition and given:
            warnings.append(f"{', '.join(given)} has no effect with {reason}")
    if method_name == "penalty" and "trainer.epochs" in keys:
        warnings.append("trainer.epochs has no effect with trainer=penalty: its schedule is trainer.stages x "
                        "trainer.alternations")
    if get(cfg, "model.widths") is not None:
        given = [k for k in keys if k in ("model.width", "model.depth")]
        if given:
            raise ConfigError(f"{given[0]} has no effect when model.widths is set (widths={show(get(cfg, 'model.widths'))}); "
                              "set model.widths=null to use model.width and model.depth")
    _check(cfg, POPULATION, "population.")
    cfg = validate_init_from(cfg, overrides)
    _check(cfg, DATA_COMMON, "data.")
    _check(cfg, DATA.get(get(cfg, "data.name"), {}), "data.")
    widths = get(cfg, "model.widths")
    if widths is None:
        _check(cfg, {"width": integer(1), "depth": integer(0)}, "model.")
    elif not (isinstance(widths, ListConfig) and widths and all(_is_int(w) and w >= 1 for w in widths)):
        _fail("model.widths", widths, "null or a non-empty list of integers >= 1")
    _check(cfg, MODEL, "model.")
    target = get(cfg, "model._target_")
    if target is not None:
        from surfacekit.models.module import import_class

        try:
            import_class(target)
        except ValueError as exc:
            raise ConfigError(f"{exc}: expected the import path of a torch.nn.Module class") from None
    _check(cfg, OPTIMIZER_COMMON, "optimizer.")
    name = get(cfg, "optimizer.name")
    _check(cfg, OPTIMIZER.get(name, {}), "optimizer.")
    _check(cfg, TRAINER_COMMON, "trainer.")
    method = get(cfg, "trainer.method")
    _check(cfg, TRAINER.get(method, {}), "trainer.")
    k = get(cfg, "population.size")
    scale = get(cfg, "population.lr_scale")
    if scale is not None:
        if not (isinstance(scale, ListConfig) and len(scale) == k and all(_is_number(v) and v > 0 for v in scale)):
            _fail("population.lr_scale", scale, f"null or a list of {k} positive finite numbers (one per member)")
        if name == "rprop":
            _fail("population.lr_scale", scale, "null with optimizer=rprop (its step is not proportional to lr)")
        if method == "penalty":
            _fail("population.lr_scale", scale, "null with trainer=penalty (its step sizes come from backtracking)")
    if target is not None and method not in MODULE_TRAINERS:
        _fail("trainer.method", method, f"one of {list(MODULE_TRAINERS)} with model._target_={target} (that trainer "
              "supports the MLP only)")
    if target is not None and get(cfg, "model.activation") == MAXOUT:
        _fail("model.activation", MAXOUT, f"relu, tanh, sigmoid or linear with model._target_={target} (maxout is "
              "an MLP activation)")
    loss = get(cfg, "model.loss")
    regression = get(cfg, "data.name") == "teacher" and not get(cfg, "data.classification")
    if regression and loss != "mse":
        _fail("model.loss", loss, "mse with data=teacher and data.classification=false (regression targets); "
              "or set data.classification=true")
    _validate_methods(cfg, method, name)
    if method == "dtp" and (get(cfg, "model.batch_norm") or get(cfg, "model.residual")):
        key = "model.batch_norm" if get(cfg, "model.batch_norm") else "model.residual"
        _fail(key, True, f"false with trainer={get(cfg, 'trainer.method')} (target propagation supports plain MLPs only)")
    if method == "penalty":
        for key in ("model.batch_norm", "model.residual"):
            if get(cfg, key):
                _fail(key, True, "false with trainer=penalty (the penalty method supports plain MLPs only)")
        if get(cfg, "trainer.batch_size") is not None:
            _fail("trainer.batch_size", get(cfg, "trainer.batch_size"), "null with trainer=penalty (full batch only)")
    if method == "backprop":
        warnings += _coupling_checks(cfg)
    widths_list = list(get(cfg, "model.widths") or [get(cfg, "model.width")] * int(get(cfg, "model.depth") or 0))
    if get(cfg, "model.residual") and not any(a == b for a, b in zip(widths_list, widths_list[1:])):
        warnings.append(f"model.residual=true adds skip connections only between hidden layers of equal width; "
                        f"the widths {widths_list} have none")
    if name == "rprop" and method == "backprop" and get(cfg, "trainer.batch_size") is not None:
        warnings.append(f"optimizer=rprop with trainer.batch_size={get(cfg, 'trainer.batch_size')}: Rprop adapts its "
                        "steps to gradient signs and is meant for full batches (trainer.batch_size=null)")
    return warnings


def _model_defaults() -> dict[str, Any]:
    return group_defaults("model", "mlp")


def validate_init_from(cfg: DictConfig, overrides: Iterable[str] = ()) -> DictConfig:
    """The keys of a warm start (``population.init_from``, ``init_point``, ``transform``,
    ``transform_layer``, ``new_width``, ``transform_noise``, ``transform_seed``; see
    :mod:`surfacekit.warm_start`) against the source job: it must be readable, hold as many members
    as ``population.size`` and have been trained on the job's data settings; the transform must fit
    its network; a model setting given on the command line (``overrides``) must equal the derived
    one, and one that differs from ``conf/model/mlp.yaml`` (a preset's) must equal the derived or
    the source's (a preset describing the source network). Returns a copy of ``cfg`` with the derived
    model (``cfg`` itself without ``init_from``).

    Raises:
        ConfigError: one line naming the key, its value and the expectation.
    """
    from surfacekit import warm_start
    from surfacekit.store import ResultsError
    from surfacekit.transforms import IDEMPOTENT

    source_path = get(cfg, "population.init_from")
    transform = get(cfg, "population.transform")
    noise, new_width = get(cfg, "population.transform_noise"), get(cfg, "population.new_width")
    if source_path is None:
        for key, value, default in (("transform", transform, "none"), ("init_point", get(cfg, "population.init_point"), "final")):
            if value != default:
                _fail(f"population.{key}", value, f"{default} without population.init_from (the source job to start from)")
        return cfg
    if get(cfg, "population.shared_init"):
        _fail("population.shared_init", True, "false with population.init_from (every member starts from its source member)")
    try:
        source = warm_start.read_source(source_path)
    except (ResultsError, OSError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _fail("population.init_from", source_path, f"a finished training job's results.h5 or run directory ({text})")
    if get(cfg, "population.init_point") == "certify" and not source.certified:
        _fail("population.init_point", "certify", "final, or run task=certify on population.init_from first (it has no "
              "certify analysis)")
    k = len(source.members)
    if get(cfg, "population.size") != k:
        _fail("population.size", get(cfg, "population.size"), f"{k}, the members of population.init_from (one start each)")
    data = source.config.get("data", {})
    for key, value in data.items():
        if show(get(cfg, f"data.{key}")) != show(value):
            _fail(f"data.{key}", get(cfg, f"data.{key}"), f"{show(value)}, the data population.init_from was trained on")
    model = source.config["model"]
    for which, target in (("the source", model.get("_target_")), ("this job", get(cfg, "model._target_"))):
        if target:
            _fail("population.init_from", source_path, f"an MLP job with an MLP model (model=mlp): warm starts read and "
                  f"map the MLP's layers, and {which} is a module population (model._target_={target})")
    widths = warm_start.source_widths(model)
    layer = get(cfg, "population.transform_layer")
    if transform != "widen" and (new_width is not None or noise != 0):
        key, value = ("new_width", new_width) if new_width is not None else ("transform_noise", noise)
        _fail(f"population.{key}", value, f"{'null' if key == 'new_width' else '0'} with population.transform={transform} "
              "(a setting of population.transform=widen)")
    if transform != "none":
        if not widths:
            _fail("population.transform", transform, "none: the source has no hidden layer to transform")
        if layer >= len(widths):
            _fail("population.transform_layer", layer, f"a hidden layer of the source, 0..{len(widths) - 1} (widths {widths})")
        if model.get("residual"):
            _fail("population.transform", transform, "none: the source is a residual network (the transforms change "
                  "which layers have skip connections)")
        if model.get("activation") == "maxout":
            _fail("population.transform", transform, "none: the source is a maxout network (the transforms map units, "
                  "not maxout pieces)")
    if transform == "widen" and (new_width is None or new_width < widths[layer]):
        _fail("population.new_width", new_width, f"an integer >= {widths[layer]}, the width of hidden layer {layer} "
              "of the source, with population.transform=widen")
    if transform == "deepen":
        if model.get("activation") not in IDEMPOTENT:
            _fail("population.transform", transform, f"none or widen: the source's model.activation={model.get('activation')} "
                  f"has phi(phi(x)) != phi(x), so an identity layer changes the function (deepen needs {list(IDEMPOTENT)})")
        if model.get("batch_norm"):
            _fail("population.transform", transform, "none or widen: deepen does not support batch norm (the identity "
                  "layer's normalization would need data statistics)")
    derived = warm_start.derived_model(model, transform, layer, new_width)
    defaults = _model_defaults()
    named = {o.partition("=")[0].lstrip("+~") for o in overrides}
    mine = warm_start.source_widths(OmegaConf.to_container(cfg.model, resolve=True))
    for key in warm_start.MODEL_KEYS:
        value = get(cfg, f"model.{key}")
        explicit = f"model.{key}" in named
        given = explicit or show(value) != show(defaults.get(key))
        if given and key in ("width", "depth", "widths"):
            # a preset's value may describe the source (the narrow network of experiment=net2net)
            if mine != derived["widths"] and (explicit or mine != widths):
                _fail(f"model.{key}", value, f"unset or {show(derived[key])}: population.init_from with "
                      f"population.transform={transform} gives the hidden widths {derived['widths']}")
        elif given and show(value) != show(derived.get(key)):
            _fail(f"model.{key}", value, f"unset or {show(derived.get(key))}, the source's (population.init_from "
                  "derives the model)")
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key, value in derived.items():
        out.model[key] = value
    return out


def _coupling_checks(cfg: DictConfig) -> list[str]:
    """trainer.coupling with the optimizer, model and population; a warning beyond the stability bound."""
    coupling = get(cfg, "trainer.coupling", "none")
    if coupling in (None, "none"):
        return []
    if get(cfg, "model.batch_norm"):
        _fail("model.batch_norm", True, f"false with trainer.coupling={coupling} (the centre has no batch statistics)")
    if coupling == "eamsgd" and get(cfg, "optimizer.name") != "sgd":
        _fail("optimizer", get(cfg, "optimizer.name"), "sgd with trainer.coupling=eamsgd (its momentum is trainer.delta)")
    if coupling == "averaging" and get(cfg, "trainer.communication") != "synchronous":
        _fail("trainer.communication", get(cfg, "trainer.communication"), "synchronous with trainer.coupling=averaging")
    p, beta = get(cfg, "population.size"), get(cfg, "trainer.beta")
    if coupling != "averaging" and get(cfg, "trainer.communication") == "synchronous" and beta >= 2 * p / (p + 1):
        return [f"trainer.beta={beta} with population.size={p}: synchronous elastic averaging is unstable for "
                f"beta >= 2p/(p+1) = {2 * p / (p + 1):.4g} (tau = 1, small steps); the centre will oscillate"]
    return []


def _validate_methods(cfg: DictConfig, method: str, optimizer: str) -> None:
    """Cross-key rules of maxout, logistic regression (model.depth=0) and the methods of
    ``NATURAL_GRADIENT`` and ``FULL_BATCH_SECOND_ORDER``."""
    trainer = f"trainer={method}"
    hidden = get(cfg, "model.widths") is not None or get(cfg, "model.depth") != 0
    if method in ("dtp", "penalty"):
        if get(cfg, "model.activation") == MAXOUT and hidden:
            _fail("model.activation", MAXOUT, f"an element-wise activation with {trainer} (it needs phi' per unit)")
        if not hidden:
            _fail("model.depth", 0, f">= 1 with {trainer} (it trains hidden layers)")
    if method in NATURAL_GRADIENT + FULL_BATCH_SECOND_ORDER and get(cfg, "model.batch_norm"):
        _fail("model.batch_norm", True, f"false with {trainer} (plain MLPs and maxout only)")
    if method in NATURAL_GRADIENT:
        if optimizer not in ("sgd", "momentum", "nesterov"):
            _fail("optimizer", optimizer, f"sgd, momentum or nesterov with {trainer} (it preconditions SGD steps)")
        if method == "prong" and get(cfg, "optimizer.weight_decay") != 0:
            _fail("optimizer.weight_decay", get(cfg, "optimizer.weight_decay"),
                  "0 with trainer=prong (decay of the whitened parameters V, d is not an L2 term of the network)")
        if method == "prong" and not get(cfg, "model.bias"):
            _fail("model.bias", False, "true with trainer=prong (centering moves the mean into the bias)")
        if method == "kfac" and get(cfg, "model.loss") == "hinge":
            _fail("model.loss", "hinge", "cross_entropy or mse with trainer=kfac (G needs the model's predictive distribution)")
    if method in FULL_BATCH_SECOND_ORDER:
        if get(cfg, "trainer.batch_size") is not None:
            _fail("trainer.batch_size", get(cfg, "trainer.batch_size"), f"null with {trainer} (full batch only)")
        if get(cfg, "population.lr_scale") is not None:
            _fail("population.lr_scale", get(cfg, "population.lr_scale"), f"null with {trainer} (it has no learning rate)")
        if method == "hessian_free" and get(cfg, "trainer.curvature") == "gauss_newton" and get(cfg, "model.loss") == "hinge":
            _fail("model.loss", "hinge", "cross_entropy or mse with trainer.curvature=gauss_newton (the hinge loss has "
                  "zero curvature in the outputs, so its Gauss-Newton matrix is 0); or trainer.curvature=hessian")


def validate_with_data(cfg: DictConfig, num_train: int, batch_norm: bool = False) -> None:
    """Checks that need the data and the built network: a minibatch larger than the training set; with
    batch norm, a minibatch of one example (its variance is undefined)."""
    bs = get(cfg, "trainer.batch_size")
    if bs is not None and bs > num_train:
        _fail("trainer.batch_size", bs, f"<= {num_train} (the training set size) or null for full batch")
    if batch_norm and bs is not None and (bs == 1 or num_train % bs == 1):
        _fail("trainer.batch_size", bs, f"a size that leaves no batch of one example of the {num_train} training "
              f"examples (batch norm needs at least 2 per batch), e.g. {bs + 1} or null")


# ----------------------------------------------------------------------------------- resources

def resolve_device(name: str) -> torch.device:
    """The torch device for ``device=...``; a clear error when CUDA is asked for but absent."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is invalid: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA device is available here; use device=cpu")
    return device


def machine_memory_gb() -> float:
    """Physical memory of this machine in GiB (inf when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("inf")


def format_gib(gib: float) -> str:
    """A memory size with enough digits: '3.2 GiB', '41 MiB', '7.20 MiB', '0.52 MiB', '0.0031 MiB'."""
    if gib >= 1:
        return f"{gib:.1f} GiB"
    mib = gib * 1024
    if mib >= 10:
        return f"{mib:.0f} MiB"
    return f"{mib:.2f} MiB" if mib >= 0.1 else f"{mib:.2g} MiB"


def check_memory(cfg: DictConfig, num_params: int, num_examples: int, activations: int | None = None) -> None:
    """Refuse a population whose parameters, gradients, optimizer state and activations cannot fit.

    ``activations``: values of every layer's output for one example (``models.activation_size``); None
    estimates them from the MLP's widest layer."""
    itemsize = torch.empty((), dtype=DTYPES[cfg.dtype]).element_size()
    k = int(cfg.population.size)
    bs = get(cfg, "trainer.batch_size") or num_examples
    per_example = 4 * activations if activations is not None else 4 * 4 * max(get(cfg, "model.widths") or [get(cfg, "model.width")])
    estimate = itemsize * k * (5 * num_params + min(bs, num_examples) * per_example) / 2**30
    limit = get(cfg, "memory_limit_gb") or machine_memory_gb()
    if estimate > limit:
        raise ConfigError(
            f"population.size={k} with {num_params} parameters per network needs about {format_gib(estimate)}, "
            f"more than the {format_gib(limit)} available (memory_limit_gb); reduce population.size or model.width"
        )


def group_defaults(group: str, option: str) -> dict[str, Any]:
    """The values of config group option ``group/option`` (e.g. ``trainer``, ``dtp``) as a plain dict.

    Reads the packaged YAML (``surfacekit/conf/<group>/<option>.yaml``, via importlib.resources: the
    one place that knows where conf/ lives) and applies its ``defaults`` list as Hydra does for
    options of the same group (``- dtp`` merges ``dtp.yaml``; ``_self_`` places the file's own
    values, last when absent). For direct use and tests; a job gets its config from Hydra.
    Interpolations are left unresolved.

    Raises:
        FileNotFoundError: no such group or option.
    """
    from importlib import resources

    path = resources.files("surfacekit.conf").joinpath(group, f"{option}.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"no config option {group}={option} (looked for {path})")
    node = OmegaConf.create(path.read_text())
    entries = list(node.pop("defaults", []))
    if "_self_" not in entries:
        entries.append("_self_")
    merged = OmegaConf.create()
    for entry in entries:
        merged = OmegaConf.merge(merged, node if entry == "_self_" else group_defaults(group, str(entry)))
    return OmegaConf.to_container(merged, resolve=False)
