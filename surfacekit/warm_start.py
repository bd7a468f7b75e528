"""Training that starts from a finished training job, optionally through a Net2Net transform.

``population.init_from=SOURCE`` (a job's ``results.h5``, its run directory, or a sweep file or
directory holding one job) starts every member of the new job from the matching member of SOURCE
instead of a random initialization:

* the starting point (``population.init_point``): ``final``, the member's final parameters
  (``/params``), or ``certify``, the point ``task=certify`` drove it to (``/certify/theta`` of the
  newest certify analysis of SOURCE's trained objective, else of the newest with a warning; recorded
  as ``certify_analysis`` and ``certify_objective``; members whose certification failed start from
  their point too, with a warning, and say so in ``source_certified``);
* the map applied to it (``population.transform``): ``none``, ``widen`` (Net2WiderNet:
  :func:`surfacekit.transforms.widen` of hidden layer ``population.transform_layer`` to
  ``population.new_width`` units, symmetry-breaking ``population.transform_noise``, mapping drawn
  from ``population.transform_seed``) or ``deepen`` (Net2DeeperNet: :func:`surfacekit.transforms.deepen`,
  an identity layer after hidden layer ``population.transform_layer``; relu and linear only).
  Both preserve the function exactly (noise included), so the new job's first recorded losses equal
  SOURCE's last ones;
* a coupled source (``trainer.coupling``): its workers are the members; the centre is not a start;
  members that diverged in SOURCE start from their diverged point, with a warning;
* batch norm: the exact full-training-set statistics of the starting point (SOURCE's stored
  ``bn_mean`` / ``bn_var``, recomputed at a certified point), mapped by the transform, are the
  evaluation-mode statistics and the initial running statistics of the new job.

The model of the new job is derived, not configured: SOURCE's model settings with the widths the
transform produces (:func:`derived_model`); a model setting that the command line or a preset gives
a different value is refused by :func:`surfacekit.config.validate`, as are a population size other
than SOURCE's and data settings other than SOURCE's. The results file records what was done:
``/init_from`` (source_path, source_job, source_run_id, source_sha256, init_point, and with
``init_point=certify`` certify_analysis and certify_objective), ``/transform``
(:meth:`surfacekit.transforms.Transformed.record`: kind, layer, widths, mapping, outgoing_scale)
and the members columns ``source_member`` and, with ``init_point=certify``, ``source_certified``
and ``source_class``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
import torch
from omegaconf import DictConfig, open_dict

from surfacekit import jobs, store, transforms
from surfacekit.models import MLPSpec, buffer_shapes, param_shapes
from surfacekit.population import Params, dataset_statistics, unflatten

TRANSFORMS = ("none", "widen", "deepen")
INIT_POINTS = ("final", "certify")
# Every model setting; all of them are derived from the source (widths through the transform).
MODEL_KEYS = ("width", "depth", "widths", "activation", "maxout_pieces", "bias", "init", "init_std", "batch_norm",
              "residual", "loss")


@dataclass
class Source:
    """A finished training job to start from: its results ``path`` (file), ``job`` name, ``run_id``,
    resolved ``config`` (dict), member ids ``members`` [K], and whether a ``task=certify`` analysis of it
    exists (``certified``)."""

    path: Path
    job: str
    run_id: str
    config: dict[str, Any]
    members: np.ndarray
    certified: bool


@dataclass
class Start:
    """The starting population: ``params`` [K, ...] and batch-norm ``statistics`` [K, width] ({} without
    batch norm) in the job's dtype and device; ``groups`` (HDF5 groups: ``init_from`` and, after a
    transform, ``transform``) and ``members`` (extra members columns [K])."""

    params: Params
    statistics: Params
    groups: dict[str, dict[str, Any]]
    members: dict[str, np.ndarray] = field(default_factory=dict)


def read_source(init_from: str) -> Source:
    """The job ``population.init_from`` names, read without its data or parameters (cheap: for validation).

    Raises:
        store.ResultsError: no readable results there, several jobs, or not a training job with parameters.
    """
    path = Path(str(init_from)).expanduser()
    if not path.exists():
        raise store.ResultsError(f"{path}: no such file or directory")
    collection = store.collect(path)
    if len(collection.jobs) != 1:
        raise store.ResultsError(f"{path}: holds {len(collection.jobs)} training jobs; name one job's results.h5 "
                                 "or run directory")
    ref = next(iter(collection.jobs.values()))
    config = store.load_config(path)
    if config.get("task") != "train":
        raise store.ResultsError(f"{path}: a task={config.get('task')} job, not a trained population")
    members = store.load_group(path, "members")["member"]
    certified = bool(store.analyses_of(collection, ref, "certify"))
    return Source(ref.file, ref.name, ref.run_id, config, np.asarray(members, dtype=np.int64), certified)


def source_widths(model: Mapping[str, Any]) -> list[int]:
    """Hidden widths of a ``model`` config: ``widths``, else ``[width] * depth``."""
    if model.get("widths") is not None:
        return [int(w) for w in model["widths"]]
    return [int(model["width"])] * int(model["depth"])


def transformed_widths(widths: list[int], transform: str, layer: int, new_width: int | None) -> list[int]:
    """Hidden widths after ``transform``: widen sets ``widths[layer] = new_width``; deepen repeats
    ``widths[layer]`` after it (the identity layer); none keeps them."""
    out = list(widths)
    if transform == "widen":
        out[layer] = int(new_width)
    elif transform == "deepen":
        out.insert(layer + 1, out[layer])
    return out


def derived_model(source_model: Mapping[str, Any], transform: str, layer: int, new_width: int | None) -> dict[str, Any]:
    """The new job's model settings: the source's, with ``widths`` (and ``width`` = widths[0] and
    ``depth`` = len(widths), for tables) after the transform."""
    widths = transformed_widths(source_widths(source_model), transform, layer, new_width)
    model = {key: source_model.get(key) for key in MODEL_KEYS if key in source_model}
    model.update(widths=widths, width=widths[0] if widths else int(source_model["width"]), depth=len(widths))
    return model


def configure(cfg: DictConfig) -> DictConfig:
    """``cfg`` with its model replaced by :func:`derived_model` of its source (in place; the stored config
    then describes the network that was trained). A config without ``population.init_from`` is unchanged."""
    pop = cfg.population
    if pop.get("init_from") is None:
        return cfg
    source = read_source(pop.init_from)
    model = derived_model(source.config["model"], str(pop.transform), int(pop.transform_layer), pop.get("new_width"))
    with open_dict(cfg):
        for key, value in model.items():
            cfg.model[key] = value
    return cfg


def _certify_analysis(init_from: str) -> tuple[store.AnalysisRef, str, str]:
    """The certify analysis of the source job to start from: the newest of the trained objective (the
    one training continues on), else the newest of any; with that analysis's ``objective`` and the job's
    name in it.

    Raises:
        store.ResultsError: the source has no certify analysis.
    """
    collection = store.collect(Path(str(init_from)).expanduser())
    ref = next(iter(collection.jobs.values()))
    found = store.analyses_of(collection, ref, "certify")
    if not found:
        raise store.ResultsError(f"{ref.file}: no task=certify analysis; run it first or use population.init_point=final")
    objectives = []
    for analysis in found:
        with h5py.File(analysis.file, "r") as f:
            objectives.append(str(f["/".join(p for p in (analysis.group, "jobs", ref.name) if p)].attrs["objective"]))
    chosen = objectives.index("trained") if "trained" in objectives else 0
    return found[chosen], objectives[chosen], ref.name


def _starting_params(cfg: DictConfig, job: store.Job, workers: np.ndarray
                     ) -> tuple[Params, Params, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The source's points [K, ...] (float64) of the members ``workers`` (a mask over ``job.members``: a
    coupled job's centre row left out), their exact batch-norm statistics, extra members columns and the
    provenance of certified points (``certify_analysis``, ``certify_objective``)."""
    point = str(cfg.population.init_point)
    keep = torch.from_numpy(workers)
    statistics = {name: v[keep] for name, v in job.buffers.items() if name.endswith((".bn_mean", ".bn_var"))}
    if point == "final":
        return {name: v[keep] for name, v in job.params.items()}, statistics, {}, {}
    analysis, objective, name = _certify_analysis(cfg.population.init_from)
    with h5py.File(analysis.file, "r") as f:
        group = f["/".join(p for p in (analysis.group, "jobs", name, "certify") if p)]
        theta = torch.from_numpy(np.asarray(group["theta"][()], dtype=np.float64))[keep]
        certified = np.asarray(group["certified"][()], dtype=bool)[workers]
        classes = np.asarray(group["classification"].asstr()[()]).astype(str)[workers]
    members = np.asarray(job.members["member"])[workers]
    missing = [int(m) for m, row in zip(members, theta) if not bool(torch.isfinite(row).all())]
    if missing:
        raise store.ResultsError(f"{job.path}: members {missing} have no certified point (not analysed by task=certify); "
                                 "certify every member or use population.init_point=final")
    if objective != "trained":
        jobs.warn(f"population.init_point=certify: the only certify analysis of {job.path} used objective={objective}, "
                  "not the trained objective this job continues on")
    if not certified.all():
        jobs.warn(f"population.init_point=certify: members {[int(m) for m in members[~certified]]} of {job.path} were "
                  f"not certified ({', '.join(sorted(set(classes[~certified])))}); they start from the point certify "
                  "reached (members column source_certified)")
    params = {name: value.contiguous() for name, value in unflatten(theta, job.spec).items()}
    statistics = dataset_statistics(job.spec, params, job.data.x_train) if job.spec.batch_norm else {}
    columns = {"source_certified": certified, "source_class": classes}
    provenance = {"certify_analysis": np.array(str(Path(analysis.file).resolve())),
                  "certify_objective": np.array(objective)}
    return params, {k: v.detach() for k, v in statistics.items()}, columns, provenance


def start(cfg: DictConfig, spec: MLPSpec, dtype: torch.dtype, device: torch.device | str) -> Start:
    """The transformed starting population of a job with ``population.init_from`` (see the module docstring).

    Cost: rebuilding the source job (its data, in float64) and copies of its parameters; with
    ``init_point=certify`` and batch norm, one forward pass over the training set.

    Raises:
        store.ResultsError: the source is unreadable, lacks certified points, or its transformed
            network is not ``spec`` (a model changed between validation and the run).
        ValueError: the transform refuses the network (:mod:`surfacekit.transforms`).
    """
    pop = cfg.population
    job = store.load_job(pop.init_from)
    workers = ~np.asarray(job.members.get("is_centre", np.zeros(len(job.members), dtype=bool)), dtype=bool)
    diverged = np.asarray(job.members["diverged"], dtype=bool) & workers
    if diverged.any():
        jobs.warn(f"population.init_from: members {[int(m) for m in np.asarray(job.members['member'])[diverged]]} "
                  f"of {job.path} diverged; they start from their diverged point (and are frozen as diverged)")
    params, statistics, columns, provenance = _starting_params(cfg, job, workers)
    kind, layer = str(pop.transform), int(pop.transform_layer)
    groups: dict[str, dict[str, Any]] = {}
    new_spec = job.spec
    if kind == "widen":
        done = transforms.widen(job.spec, params, layer, int(pop.new_width), noise=float(pop.transform_noise),
                                seed=int(pop.transform_seed), statistics=statistics)
    elif kind == "deepen":
        done = transforms.deepen(job.spec, params, layer, statistics=statistics)
    else:
        done = None
    if done is not None:
        params, statistics, new_spec = done.params, done.statistics, done.spec
        groups["transform"] = {**done.record(), "noise": np.array(float(pop.transform_noise)),
                               "seed": np.array(int(pop.transform_seed))}
    if new_spec != spec:
        raise store.ResultsError(f"{job.path}: the transformed network {new_spec} is not the job's model {spec}")
    groups["init_from"] = {"source_path": np.array(str(job.path.resolve())), "source_job": np.array(job.name),
                           "source_run_id": np.array(job.run_id), "source_sha256": np.array(store.file_sha256(job.path)),
                           "init_point": np.array(str(pop.init_point)), **provenance}
    columns["source_member"] = np.asarray(job.members["member"], dtype=np.int64)[workers]
    to = dict(dtype=dtype, device=device)
    return Start({name: params[name].to(**to).contiguous() for name in param_shapes(spec)},
                 {name: statistics[name].to(**to).contiguous() for name in buffer_shapes(spec)}, groups, columns)
