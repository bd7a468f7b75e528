"""surfacekit-reproduce: a tiny reproduction end to end (sweep, analysis, checks, report), the report's
links, FAIL and ERROR shown with their values, the command line's refusals, and every registered
entry's commands composed and validated at both scales (no training).

The fast tests run the steps in this process (``runner.execute`` replaced by an in-process twin: the
same argv, no interpreter start-up); the slow test runs the real command on two registered entries."""

from __future__ import annotations

import contextlib
import html.parser
import importlib.util
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import ROOT, TINY, _in_process
from surfacekit import store
from surfacekit.reproduce import cli, runner
from surfacekit.reproduce.entries import NAMES, registry
from surfacekit.reproduce.entry import Analysis, Check, Context, Plan, Reproduction, Surfacekit
from surfacekit.reproduce.measure import table


def execute_in_process(argv, log, progress, swept=()):
    """``runner.execute`` without subprocesses: ``python -m surfacekit ARGS`` through the in-process CLI,
    ``python analyses/X.py ARGS`` through the script's ``main``."""
    if argv[1:3] == ["-m", "surfacekit"]:
        result = _in_process(argv[3:], Path.cwd())
        code, text = result.returncode, result.stdout + result.stderr
    else:
        spec = importlib.util.spec_from_file_location(Path(argv[1]).stem, argv[1])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            code = module.main(argv[2:])
        text = buffer.getvalue()
    return code, runner.relay(io.StringIO(text), log, progress, swept)


def tiny_plan(ctx: Context) -> Plan:
    sweep = (*(o for o in TINY if not o.startswith(("population.size", "model.width"))), "population.size=3", "model.width=3,4")
    return Plan((Surfacekit("widths", sweep), Analysis("minima_histograms", (str(ctx.run_dir("widths")), "--bootstrap", "200"))),
                ("two tiny widths only",))


def tiny_checks(ctx: Context) -> list[Check]:
    by_width = table(ctx, "minima_histograms", "minima_by_width").sort_values("width")
    members = store.load_members(ctx.run_dir("widths"), analyses="none")
    means = members.groupby("width").final_test_loss.mean().to_numpy(dtype=float)
    return [Check("analysis table agrees with the members (mean test loss per width)",
                  float(np.abs(by_width.test_mean.to_numpy() - means).max()), bool(np.allclose(by_width.test_mean, means, rtol=1e-6, atol=0)),
                  "equal to float32 precision (1e-6)", published="the loaders", source="surfacekit.store"),
            Check("mean test loss at width 4 below 1e-9 (deliberately impossible)", float(means[-1]), bool(means[-1] < 1e-9),
                  "< 1e-9", ci=(0.25, 0.75), ci_level="90%", published="0", source="nobody")]


TINY_ENTRY = Reproduction("tiny", "A tiny width sweep", "nobody 2025", "Two widths, two networks each.", tiny_plan, tiny_checks)


def broken_plan(ctx: Context) -> Plan:
    return Plan((Surfacekit("bad", (*TINY, "model.widht=3")),))


BROKEN_ENTRY = Reproduction("broken", "A typo in a preset", "nobody", "Fails at its first step.", broken_plan, lambda ctx: [])


class Links(html.parser.HTMLParser):
    """Every href and src of a page, and whether it loads anything from outside."""

    def __init__(self):
        super().__init__()
        self.links, self.external = [], []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value:
                (self.external if re.match(r"[a-z]+:", value) or value.startswith("//") else self.links).append(value)
        if tag in ("script", "link", "iframe"):
            self.external.append(tag)


def resolve_links(out: Path) -> list[str]:
    """Check every link of index.html resolves inside ``out`` (anchors to ids of the page); return them."""
    page = (out / "index.html").read_text()
    parser = Links()
    parser.feed(page)
    assert parser.external == []
    ids = set(re.findall(r'id="([^"]+)"', page))
    for link in parser.links:
        if link.startswith("#"):
            assert link[1:] in ids, link
        else:
            target = (out / link).resolve()
            assert target.is_file() and out.resolve() in target.parents, link
    for link in re.findall(r"\]\(([^)#][^)]*)\)", (out / "report.md").read_text()):
        assert (out / link).is_file(), link
    return parser.links


@pytest.fixture
def in_process(monkeypatch):
    monkeypatch.setattr(runner, "execute", execute_in_process)
    monkeypatch.setattr(cli, "registry", lambda: {"tiny": TINY_ENTRY, "broken": BROKEN_ENTRY})


def test_a_tiny_reproduction_end_to_end(in_process, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["--out", str(out)]) == 1  # a failed check and a failed step
    err = capsys.readouterr().err
    assert "[1/2] tiny: job #0: model.width=3" in err and "[1/2] tiny: FAIL (1 of 2 checks passed)" in err
    assert "[2/2] broken: ERROR in " in err and "model.widht" in err

    page = (out / "index.html").read_text()
    links = resolve_links(out)
    assert any(link.endswith("test_loss_histograms.png") for link in links)
    assert any(link.endswith("test_loss_histograms.pdf") for link in links)
    assert any(link.endswith("minima_by_width.csv") for link in links)
    # the impossible property: FAIL with its measured value, criterion, CI and source
    members = store.load_members(out / "tiny" / "runs" / "widths", analyses="none")
    measured = members[members.width == 4].final_test_loss.astype(float).mean()
    row = page[page.index("deliberately impossible"):]
    row = row[:row.index("</tr>")]
    assert f"{measured:.4g}" in row and "FAIL" in row and "&lt; 1e-9" in row and "[0.25, 0.75] (90%)" in row
    assert "nobody" in row
    passed = page[page.index("analysis table agrees"):]
    assert "PASS" in passed[:passed.index("</tr>")]
    # the exact commands, the scale's note, the broken entry's error, and the markdown twin
    assert "surfacekit -m trainer.epochs=2" in page and "python analyses/minima_histograms.py" in page
    assert "two tiny widths only" in page
    assert 'class="ERROR"' in page and "model.widht" in page[page.index('id="broken"'):]
    md = (out / "report.md").read_text()
    assert "deliberately impossible" in md and "**FAIL**" in md and "**ERROR**" in md
    assert (out / "tiny" / "log.txt").read_text().count("$ ") == 3  # two commands and the checks

    # --resume reuses the finished jobs (same run ids), reruns the analysis and the checks
    run_ids = {job: store.load_attrs(out / "tiny" / "runs" / "widths", job)["run_id"] for job in ("0", "1")}
    assert cli.main(["--only", "tiny", "--out", str(out), "--resume"]) == 1
    assert {job: store.load_attrs(out / "tiny" / "runs" / "widths", job)["run_id"] for job in ("0", "1")} == run_ids
    log = (out / "tiny" / "log.txt").read_text()
    assert log.count("$ checks") == 2 and "resume=true" in log.split("$ checks")[1]


def test_command_line_refusals(in_process, tmp_path, capsys):
    def refused(*argv):
        with pytest.raises(SystemExit) as done:
            cli.main(list(argv))
        assert done.value.code == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert "unknown reproduction(s) ['nope']" in refused("--only", "nope", "--out", str(tmp_path / "a"))
    assert "model.widht: no such setting" in refused("--only", "tiny", "--out", str(tmp_path / "b"), "model.widht=3")
    assert "no such folder" in refused("--mnist", str(tmp_path / "missing"))
    used = tmp_path / "used"
    (used / "tiny").mkdir(parents=True)
    (used / "tiny" / "log.txt").write_text("earlier run")
    assert "already holds ['tiny']: pass --resume" in refused("--only", "tiny", "--out", str(used))


def test_swept_keys():
    assert runner.swept_keys(["a=1,2", "b=[1,2]", "c=x", "critical.finders=[a,b]", "seed=0,1", "d={x: 1, y: 2}"]) == ["a", "seed"]


def test_status_needs_a_tested_check():
    assert runner.status_of([Check("x", 1.0, True), Check("y", 2.0, None)]) == "PASS"
    assert runner.status_of([Check("x", 1.0, True), Check("y", 2.0, False)]) == "FAIL"
    assert runner.status_of([Check("y", 2.0, None)]) == "FAIL"  # nothing tested is no pass
    assert Check("z", 1.0, np.bool_(True)).passed is True


@pytest.mark.parametrize("scale", ["small", "full"])
def test_every_entry_plans_valid_commands(scale, tmp_path):
    """Each registered entry's surfacekit commands compose and validate (the command's own pre-check),
    its analysis scripts exist, and its names are unique; nothing runs."""
    from surfacekit.app import precheck

    entries = registry()
    assert list(entries) == list(NAMES)
    for name, entry in entries.items():
        ctx = Context(name, scale, tmp_path / name, mnist=tmp_path / "mnist")
        plan = entry.plan(ctx)
        assert plan.steps, name
        names = [s.name for s in plan.steps if isinstance(s, Surfacekit)]
        folders = [s.folder for s in plan.steps if isinstance(s, Analysis)]
        assert len(set(names)) == len(names) and len(set(folders)) == len(folders), name
        for step in plan.steps:
            if isinstance(step, Surfacekit):
                precheck(list(step.overrides))
            else:
                assert (runner.ANALYSES_DIR / f"{step.script}.py").is_file(), step.script


@pytest.mark.slow
def test_scale_small_for_two_entries(tmp_path):
    """The real command (subprocesses, the configured launcher) on two registered reproductions."""
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "surfacekit.reproduce.cli", "--scale", "small", "--only", "toy_surfaces",
                           "dauphin", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=1800,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"PASS\s+toy_surfaces", done.stdout) and re.search(r"PASS\s+dauphin", done.stdout)
    links = resolve_links(out)
    assert sum(link.endswith(".png") for link in links) >= 7
    assert "index_vs_loss.png" in " ".join(links) and "eigenvalue_histograms.png" in " ".join(links)
