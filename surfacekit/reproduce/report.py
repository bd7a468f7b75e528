"""The static report of a reproduction run: ``DIR/index.html`` and ``DIR/report.md``.

One page, readable from the file system: a table of contents with every reproduction's status,
then per reproduction its paper, summary, the scale's notes (what was left out and why), the checks
(published value and source beside ours, CI, criterion, PASS/FAIL), every figure its analyses wrote
(PNG shown, linked to the PDF beside it), every table (CSV rendered; the markdown version in
report.md), the error of a failed step, the exact commands with their wall times, and the log.
Every link is relative to DIR and points into it; the HTML has its style inline and loads nothing
from outside.
"""

from __future__ import annotations

import html
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from surfacekit.reproduce.entry import Check
from surfacekit.reproduce.runner import Outcome, mark

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 2.2em; border-bottom: 1px solid #ccc; } h3 { margin-bottom: 0.3em; }
table { border-collapse: collapse; font-size: 0.86em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; } .meta { color: #555; font-size: 0.9em; }
.PASS { color: #fff; background: #1a7f37; padding: 1px 7px; border-radius: 3px; font-weight: bold; }
.FAIL { color: #fff; background: #c62828; padding: 1px 7px; border-radius: 3px; font-weight: bold; }
.ERROR { color: #fff; background: #6a1b9a; padding: 1px 7px; border-radius: 3px; font-weight: bold; }
.info { color: #333; background: #e0e0e0; padding: 1px 7px; border-radius: 3px; }
pre { background: #f6f8fa; padding: 0.7em; overflow-x: auto; font-size: 0.85em; }
pre.error { background: #fdecea; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; max-width: 100%; vertical-align: top; }
figure img { max-width: 100%; max-height: 520px; border: 1px solid #ddd; }
figcaption { font-size: 0.8em; color: #555; }
"""


@dataclass(frozen=True)
class RunInfo:
    """What the whole run was: its command line, scale, where it ran from, provenance, load and time."""

    command: str
    overrides: tuple[str, ...]
    scale: str
    cwd: str
    started: str
    provenance: dict
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]
    seconds: float
    cpu_seconds: float
    finished: bool


def duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


def value(v) -> str:
    """A measured value as text: 4 significant digits for floats, blank for NaN."""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def ci_text(check: Check) -> str:
    if check.ci is None:
        return ""
    lo, hi = check.ci
    return f"[{value(float(lo))}, {value(float(hi))}]" + (f" ({check.ci_level})" if check.ci_level else "")


def relative(path: Path, out: Path) -> str:
    """``path`` relative to the report folder, with forward slashes (a URL path)."""
    return path.resolve().relative_to(out.resolve()).as_posix()


def figures(outcome: Outcome) -> list[Path]:
    """The PNG figures the reproduction's analyses wrote, in folder then name order."""
    root = outcome.ctx.root / "figures"
    return sorted(root.rglob("*.png")) if root.exists() else []


def tables(outcome: Outcome, suffix: str) -> list[Path]:
    """The tables (``.csv`` or ``.md``) the reproduction's analyses wrote."""
    root = outcome.ctx.root / "figures"
    return sorted(root.rglob(f"*{suffix}")) if root.exists() else []


def _load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{v:.2f}" for v in load)


def _summary_line(info: RunInfo, outcomes: Sequence[Outcome]) -> str:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("PASS", "FAIL", "ERROR")}
    state = "finished" if info.finished else "interrupted or still running"
    return (f"{len(outcomes)} reproduction(s) {state}: {counts['PASS']} PASS, {counts['FAIL']} FAIL, "
            f"{counts['ERROR']} ERROR; wall {duration(info.seconds)}, CPU {duration(info.cpu_seconds)} "
            f"(this process and its children); load average (1, 5, 15 min) {_load(info.load_start)} at the start, "
            f"{_load(info.load_end)} at the end")


def _provenance_line(info: RunInfo) -> str:
    p = info.provenance
    commit = p.get("git_commit") or "unknown"
    dirty = " (uncommitted changes)" if p.get("git_dirty") else ""
    return (f"started {info.started} on {p.get('hostname', '?')}; surfacekit {p.get('surfacekit_version', '?')}, "
            f"git {commit[:12]}{dirty}; python {p.get('python_version', '?')}, torch {p.get('torch_version', '?')}")


# -------------------------------------------------------------------------------------- HTML

def _h(text) -> str:
    return html.escape(str(text))


def _checks_html(checks: Sequence[Check]) -> str:
    rows = ["<tr><th>property or quantity</th><th>published</th><th>source</th><th>ours</th><th>CI</th>"
            "<th>criterion</th><th>result</th></tr>"]
    for c in checks:
        result = mark(c.passed)
        rows.append(f"<tr><td>{_h(c.claim)}</td><td>{_h(c.published)}</td><td>{_h(c.source)}</td>"
                    f"<td class=\"num\">{_h(value(c.measured))}</td><td class=\"num\">{_h(ci_text(c))}</td>"
                    f"<td>{_h(c.criterion)}</td><td><span class=\"{result}\">{result}</span></td></tr>")
    return "<div class=\"scroll\"><table>" + "\n".join(rows) + "</table></div>"


def _csv_html(path: Path) -> str:
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        return f"<p>{_h(path.name)}: unreadable ({_h(exc)})</p>"
    table = frame.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0)
    return f"<div class=\"scroll\">{table}</div>"


def _section_html(i: int, outcome: Outcome, info: RunInfo, out: Path) -> str:
    e, parts = outcome.entry, []
    parts.append(f"<h2 id=\"{_h(e.name)}\">{i}. {_h(e.title)} <span class=\"{outcome.status}\">{outcome.status}</span></h2>")
    parts.append(f"<p class=\"meta\">{_h(e.reference)} &middot; <code>{_h(e.name)}</code> &middot; wall "
                 f"{_h(duration(outcome.seconds))}, CPU {_h(duration(outcome.cpu_seconds))}</p>")
    parts.append(f"<p>{_h(e.summary)}</p>")
    if outcome.notes:
        parts.append("<p><b>Left out at this scale:</b></p><ul>" + "".join(f"<li>{_h(n)}</li>" for n in outcome.notes) + "</ul>")
    if outcome.error:
        parts.append(f"<h3>Error</h3><pre class=\"error\">{_h(outcome.error)}</pre>")
    if outcome.checks:
        parts.append("<h3>Published and measured</h3>" + _checks_html(outcome.checks))
    pngs = figures(outcome)
    if pngs:
        parts.append("<h3>Figures</h3>")
        for png in pngs:
            pdf = png.with_suffix(".pdf")
            caption = relative(png, outcome.ctx.root / "figures")
            link = relative(pdf if pdf.exists() else png, out)
            parts.append(f"<figure><a href=\"{_h(link)}\"><img src=\"{_h(relative(png, out))}\" alt=\"{_h(caption)}\"></a>"
                         f"<figcaption>{_h(caption)}" + (" (click for the PDF)" if pdf.exists() else "") + "</figcaption></figure>")
    csvs = tables(outcome, ".csv")
    texts = [md for md in tables(outcome, ".md") if not md.with_suffix(".csv").exists()]  # tables written as markdown only
    if csvs or texts:
        parts.append("<h3>Tables</h3>")
        for csv in csvs:
            name = relative(csv, outcome.ctx.root / "figures")
            parts.append(f"<p><a href=\"{_h(relative(csv, out))}\">{_h(name)}</a></p>" + _csv_html(csv))
        for md in texts:
            name = relative(md, outcome.ctx.root / "figures")
            parts.append(f"<p><a href=\"{_h(relative(md, out))}\">{_h(name)}</a></p><pre>{_h(md.read_text())}</pre>")
    if outcome.steps:
        lines = "\n".join(f"{s.command}    # {duration(s.seconds)}" + ("" if s.returncode == 0 else f", exit {s.returncode}")
                          for s in outcome.steps)
        parts.append(f"<h3>Commands</h3><pre>{_h(lines)}</pre>")
    parts.append(f"<p>Rerun this reproduction alone: <code>{_h(rerun_command(outcome, info))}</code>. "
                 f"Output of every command: <a href=\"{_h(relative(outcome.log, out))}\">log.txt</a>.</p>")
    return "<section>\n" + "\n".join(parts) + "\n</section>"


def rerun_command(outcome: Outcome, info: RunInfo) -> str:
    """The command that reruns one reproduction into a new folder, with the run's overrides."""
    return shlex.join(["surfacekit-reproduce", "--scale", outcome.ctx.scale, "--only", outcome.entry.name, *info.overrides])


def html_report(outcomes: Sequence[Outcome], info: RunInfo, out: Path) -> str:
    toc = ["<tr><th>#</th><th>reproduction</th><th>result</th><th>checks passed</th><th>wall</th><th>CPU</th></tr>"]
    for i, o in enumerate(outcomes, 1):
        tested = [c for c in o.checks if c.passed is not None]
        toc.append(f"<tr><td>{i}</td><td><a href=\"#{_h(o.entry.name)}\">{_h(o.entry.title)}</a></td>"
                   f"<td><span class=\"{o.status}\">{o.status}</span></td>"
                   f"<td class=\"num\">{sum(bool(c.passed) for c in tested)} / {len(tested)}</td>"
                   f"<td class=\"num\">{_h(duration(o.seconds))}</td><td class=\"num\">{_h(duration(o.cpu_seconds))}</td></tr>")
    body = [f"<h1>surfacekit: paper reproductions, scale {_h(info.scale)}</h1>",
            f"<p class=\"meta\">{_h(_provenance_line(info))}</p>",
            f"<p>{_h(_summary_line(info, outcomes))}.</p>",
            f"<p>Command: <code>{_h(info.command)}</code>, run from <code>{_h(info.cwd)}</code> (paths in the commands "
            "below are relative to it). PASS: every tested property holds; FAIL: one does not (its measured value is "
            "shown); ERROR: a step failed (its error is shown). Rows marked info show our number beside the "
            "published one without a test.</p>",
            "<h2 id=\"contents\">Contents</h2><table>" + "\n".join(toc) + "</table>"]
    body += [_section_html(i, o, info, out) for i, o in enumerate(outcomes, 1)]
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>surfacekit reproductions ({_h(info.scale)})</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# ---------------------------------------------------------------------------------- markdown

def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _section_md(i: int, outcome: Outcome, info: RunInfo, out: Path) -> str:
    e = outcome.entry
    lines = [f"## {i}. {e.title}: {outcome.status}", "",
             f"{e.reference} · `{e.name}` · wall {duration(outcome.seconds)}, CPU {duration(outcome.cpu_seconds)}", "",
             e.summary, ""]
    if outcome.notes:
        lines += ["Left out at this scale:", ""] + [f"- {n}" for n in outcome.notes] + [""]
    if outcome.error:
        lines += ["### Error", "", "```", outcome.error, "```", ""]
    if outcome.checks:
        lines += ["### Published and measured", "",
                  "| property or quantity | published | source | ours | CI | criterion | result |",
                  "|---|---|---|---:|---:|---|---|"]
        lines += [f"| {_md(c.claim)} | {_md(c.published)} | {_md(c.source)} | {_md(value(c.measured))} | "
                  f"{_md(ci_text(c))} | {_md(c.criterion)} | **{mark(c.passed)}** |" for c in outcome.checks]
        lines.append("")
    pngs = figures(outcome)
    if pngs:
        lines += ["### Figures", ""]
        for png in pngs:
            caption = relative(png, outcome.ctx.root / "figures")
            lines += [f"![{caption}]({relative(png, out)})", ""]
    mds = tables(outcome, ".md")
    if mds:
        lines += ["### Tables", ""]
        for md in mds:
            lines += [f"`{relative(md, outcome.ctx.root / 'figures')}`", "", md.read_text().rstrip(), ""]
    if outcome.steps:
        lines += ["### Commands", "", "```bash"]
        lines += [f"{s.command}    # {duration(s.seconds)}" + ("" if s.returncode == 0 else f", exit {s.returncode}")
                  for s in outcome.steps]
        lines += ["```", ""]
    lines += [f"Rerun this reproduction alone: `{rerun_command(outcome, info)}`. "
              f"Output of every command: [log.txt]({relative(outcome.log, out)}).", ""]
    return "\n".join(lines)


def markdown_report(outcomes: Sequence[Outcome], info: RunInfo, out: Path) -> str:
    lines = [f"# surfacekit: paper reproductions, scale {info.scale}", "", _provenance_line(info), "",
             _summary_line(info, outcomes) + ".", "",
             f"Command: `{info.command}`, run from `{info.cwd}`.", "",
             "| # | reproduction | result | checks passed | wall | CPU |", "|---|---|---|---:|---:|---:|"]
    for i, o in enumerate(outcomes, 1):
        tested = [c for c in o.checks if c.passed is not None]
        lines.append(f"| {i} | [{_md(o.entry.title)}](#{o.entry.name}) | **{o.status}** | "
                     f"{sum(bool(c.passed) for c in tested)} / {len(tested)} | {duration(o.seconds)} | {duration(o.cpu_seconds)} |")
    lines.append("")
    lines += [f"<a id=\"{o.entry.name}\"></a>\n\n" + _section_md(i, o, info, out) for i, o in enumerate(outcomes, 1)]
    return "\n".join(lines)


def write_report(outcomes: Sequence[Outcome], info: RunInfo, out: Path) -> Path:
    """Write ``out/index.html`` and ``out/report.md`` (each replaced whole); returns the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    page = out / "index.html"
    for path, text in ((page, html_report(outcomes, info, out)), (out / "report.md", markdown_report(outcomes, info, out))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return page
