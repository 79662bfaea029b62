"""``ssmtl report``: one self-contained HTML page about a run or a benchmark.

* **A run** (pre-training or fine-tuning): what it is (network, tasks, data, steps), its
  curves (drawn again from ``metrics.jsonl``), and for an
  evaluated fine-tuning run the per-structure and per-volume tables and the predictions
  over held-out slices of the best, median and worst test volume; then the config.
* **A benchmark directory** (``results.json``): the Dice-vs-labels plot, the tables of
  :mod:`ssmtl.experiments.results` (by budget, paired differences, per structure) and the
  curves of each pre-training.

Images are embedded as base64 PNG and there is no external asset (:mod:`ssmtl.publish.html`).

Paths on the page are names only (the run's, the cache's: no absolute local path, as in an
export), and subjects and volumes are named by their pseudonyms (``subject-007``:
:mod:`ssmtl.data.pseudonyms`) in the tables, the captions and the titles drawn into the
pictures, so the page can be shared; ``identify_subjects`` (``--identify-subjects``) names them
by their real ids for internal use, and the page then says so at its top. The page is the only file a report writes, under the one output rule (:mod:`ssmtl.storage.outputs`):
never over the run's own files or caches, never into another run, never over a file that is
not an earlier report page (which it replaces: a report is drawn again whenever asked), and
one process at a time. The run itself is left byte for byte as it was.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from ssmtl._version import __version__
from ssmtl.api.errors import SsmtlError
from ssmtl.training.curves import collect, read_records, render
from ssmtl.storage.files import load_json, save_text
from ssmtl.storage.outputs import check_output, claimed_output, OutputKind
from ssmtl.training.rundir import METRICS
from ssmtl.publish import html
from ssmtl.data.pseudonyms import WITHHELD
from ssmtl.data.shareable import path_name, shareable, without_paths
from ssmtl.publish.model_card import identified_warning
from ssmtl.publish.runs import RunInfo, read_run

REPORT_FILE = "report.html"
RESULTS_FILE = "results.json"
_EARLIER_PAGE = re.compile(r"<title>ssmtl (report|benchmark): ")


def is_report_page(path: Path) -> bool:
    """Whether ``path`` is a page ``ssmtl report`` wrote (its generator tag, or the title of older pages)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    return head.startswith("<!DOCTYPE html>") and (html.GENERATOR in head or bool(_EARLIER_PAGE.search(head)))


#: a report page: one file, kept at RUN/report.html inside its run, drawn again over an earlier page
REPORT = OutputKind("report page", folder=False, recognise=is_report_page, home=REPORT_FILE, refresh=True,
                    example=REPORT_FILE)


def _number(value: Any, digits: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.{digits}f}"


def _header(title: str, subtitle: str) -> list[str]:
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return [f"<h1>{html.text(title)}</h1>", f'<p class="meta">{html.text(subtitle)} · generated {generated} by ssmtl {__version__}</p>']


def _curves(run_dir: Path, title: str) -> list[str]:
    metrics = run_dir / METRICS
    curves = collect(read_records(metrics)) if metrics.is_file() else None
    if curves is None or curves.empty:
        return ['<p class="note">No metrics.jsonl records: nothing to draw.</p>']
    return [html.image(render(curves, title), f"training curves of {title}")]


def _summary(info: RunInfo) -> list[str]:
    data = info.data
    rows = [
        ["kind", info.kind],
        ["network", ", ".join(f"{k}={v}" for k, v in info.network.items())],
        ["pre-training tasks", ", ".join(info.tasks) or "none (scratch)"],
        ["steps", info.steps],
        ["data", f"{shareable(data.get('path'))} (fingerprint {str(data.get('fingerprint'))[:16]})"],
        ["subjects in the cache", data.get("subjects", "cache not readable")],
        ["modalities", ", ".join(f"{m}: {n}" for m, n in (data.get("modalities") or {}).items()) or "–"],
    ]
    if info.kind == "finetune":
        rows += [["started from", path_name(str(info.init))], ["head", (info.head or {}).get("name")],
                 ["labeled subjects", _subjects(info, info.labeled_subjects)]]
    return ["<h2>Run</h2>", html.table(None, rows)]


def _subjects(info: RunInfo, subjects: list[str]) -> str:
    """Subjects as the page names them: pseudonyms (real ids with identify), or a count when the
    cache that knows their pseudonyms is gone."""
    if info.names.known or info.names.identify:
        return ", ".join(info.names.subjects(subjects))
    return f"{len(subjects)} ({WITHHELD}: the cache is not readable to look up their pseudonyms)"


def _evaluation(info: RunInfo, registry) -> list[str]:
    results = info.evaluation
    if results is None:
        note = ("not evaluated: run <code>ssmtl evaluate RUN</code>, then the report again"
                if info.kind == "finetune" else "pre-training has no score of its own; report a fine-tuning run from it")
        return ["<h2>Evaluation</h2>", f'<p class="note">{note}</p>']
    classes = list(results.get("class_names") or [])
    per_class = results.get("per_class") or {}
    out = ["<h2>Evaluation</h2>",
           f"<p>3D Dice and HD95 (mm) on the {len(results.get('test_subjects') or [])} held-out "
           f"<code>{html.text(results.get('split', 'test'))}</code> subject(s), {html.text(results.get('space', 'cache'))} grid.</p>",
           html.table(["structure", "Dice", "HD95 (mm)"],
                      [[c, _number((per_class.get(c) or {}).get("dice"), 3), _number((per_class.get(c) or {}).get("hd95"), 2)] for c in classes],
                      total=["mean", _number(results.get("mean_dice"), 3), _number(results.get("mean_hd95"), 2)]),
           "<h3>Per volume</h3>",
           html.table(["volume", "mean Dice", *classes],
                      sorted([[info.names.volume(str(v.get("volume"))), _number(v.get("mean_dice"), 3),
                               *(_number((v.get("dice") or {}).get(c), 3) for c in classes)]
                              for v in results.get("per_volume") or []], key=lambda row: row[0]))]
    from ssmtl.publish.overlays import render_overlays

    out.append("<h2>Predictions on held-out slices</h2>")
    try:
        overlays = render_overlays(info.path, results, registry, identify=info.names.identify)
    except SsmtlError as exc:
        return out + [f'<p class="note">No overlays: {html.text(without_paths(str(exc)))}</p>']
    out.append("<p>The best, the median and the worst test volume by mean Dice; each on the slice with the most labeled "
               "foreground: the image, the reference labels, the prediction.</p>")
    out += [html.image(o.png, f"{o.rank} volume {o.volume}", f"{o.rank}: {o.volume}, slice {o.slice_index}") for o in overlays]
    return out


def run_report(run_dir: Path, registry, info: RunInfo | None = None, identify_subjects: bool = False) -> str:
    info = info if info is not None else read_run(run_dir, registry, identify_subjects)
    body = _header(f"ssmtl report: {info.name}", f"{'pre-training' if info.kind == 'pretrain' else 'fine-tuning'} run {info.name}")
    warning = identified_warning(info)
    if warning:
        body.append(f'<p class="note"><strong>{html.text(warning)}</strong></p>')
    body += _summary(info)
    body += ["<h2>Curves</h2>", *_curves(info.path, info.name)]
    body += _evaluation(info, registry)
    body += ["<h2>Configuration</h2>", f"<pre>{html.text(json.dumps(shareable(info.config), indent=2, default=str))}</pre>"]
    return html.page(f"ssmtl report: {info.name}", body)


def benchmark_report(bench_dir: Path) -> str:
    from ssmtl.experiments.results import plot_dice_vs_labels, render_markdown

    results = load_json(bench_dir / RESULTS_FILE, "benchmark results")
    body = _header(f"ssmtl benchmark: {bench_dir.resolve().name}", f"benchmark {bench_dir.resolve().name}")
    with tempfile.TemporaryDirectory() as tmp:  # drawn again: the page never shows a stale plot
        plot = Path(tmp) / "dice_vs_labels.png"
        plot_dice_vs_labels(results, plot)
        body += ["<h2>Dice vs label budget</h2>", html.image(plot.read_bytes(), "mean 3D Dice by label budget")]
    body += ["<h2>Tables</h2>", html.markdown(render_markdown(results))]
    # pretrain/<method>/<run>/ (a benchmark keeps several runs per method)
    pretrain_runs = sorted(p.parent for p in (bench_dir / "pretrain").rglob(METRICS))
    if pretrain_runs:
        body.append("<h2>Pre-training curves</h2>")
        for run in pretrain_runs:
            name = run.relative_to(bench_dir / "pretrain").as_posix()
            body += [f"<h3>{html.text(name)}</h3>", *_curves(run, name)]
    body += ["<h2>Configuration</h2>", f"<pre>{html.text(json.dumps(shareable(results.get('config')), indent=2, default=str))}</pre>"]
    return html.page(f"ssmtl benchmark: {bench_dir.name}", body)


def write_report(target: str | Path, out: str | Path | None = None, *, registry, identify_subjects: bool = False) -> Path:
    """Write the report of a run or benchmark directory to ``out`` (default ``TARGET/report.html``);
    ``identify_subjects``: name a run's subjects by their real ids (default: pseudonyms)."""
    target = Path(target)
    if not target.is_dir():
        raise SsmtlError(f"{target}: no such run or benchmark directory")
    out = Path(out) if out is not None else target / REPORT_FILE
    if (target / RESULTS_FILE).is_file():
        inputs = [("benchmark", target)]
        check_output(out, inputs, REPORT)
        page = benchmark_report(target)
    else:
        info = read_run(target, registry, identify_subjects)
        inputs = [("run", target), ("cache of the run", info.data.get("path")),
                  ("cache of the evaluation", (info.evaluation or {}).get("data"))]
        check_output(out, inputs, REPORT)  # before drawing anything: a refused output costs nothing
        page = run_report(target, registry, info)
    with claimed_output(out, inputs, REPORT) as out:
        return save_text(out, page)
