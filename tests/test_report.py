"""``ssmtl report``: one self-contained HTML page (images embedded) about a run or a benchmark."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

import ssmtl
from ssmtl.api import SsmtlError
from ssmtl.data.cache import SliceCache
from ssmtl.data.pseudonyms import Pseudonyms
from ssmtl.training.curves import CURVES_FILE
from ssmtl.publish import html
from ssmtl.publish.overlays import pick_volumes
from ssmtl.publish.report import write_report
from ssmtl.host.registry import get_registry

PNG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _images(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in PNG.findall(page)]


def _hashes(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _self_contained(page: str) -> bool:
    """No external asset: every src is inline data, no stylesheet or script is fetched."""
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    return all(s.startswith("data:") for s in sources) and "<link" not in page and "<script" not in page


def test_a_finetuning_report_shows_tables_curves_and_the_best_median_and_worst_volume(finetuned_run, tmp_path):
    run = tmp_path / "ft"
    shutil.copytree(finetuned_run, run)
    ssmtl.evaluate(run, split="train")  # three scored volumes: best, median and worst differ
    evaluation = json.loads((run / "eval.json").read_text())
    (run / CURVES_FILE).unlink()
    before = _hashes(run)
    path = write_report(run, registry=get_registry())
    page = path.read_text()
    assert path == run / "report.html" and _self_contained(page)
    images = _images(page)
    assert len(images) == 1 + 3 and all(i.format == "PNG" for i in images)  # curves (from metrics.jsonl), then three overlays
    assert _hashes(run) == {**before, "report.html": _hashes(run)["report.html"]}  # the page is all it writes
    assert write_report(run, registry=get_registry()) == path  # an earlier page is drawn again
    cache = json.loads((run / "run.json").read_text())["data"]["path"]
    assert str(tmp_path) not in page and str(Path(cache).parent) not in page  # names, never local paths
    ranked = sorted(evaluation["per_volume"], key=lambda v: v["mean_dice"], reverse=True)
    names = Pseudonyms.of(SliceCache(cache))  # volumes are shown by their pseudonyms, never by their names
    for rank, volume in zip(("best", "median", "worst"), (ranked[0], ranked[1], ranked[-1])):
        assert f"{rank}: {names.volume(volume['volume'])}, slice" in page and volume["volume"] not in page
    assert "<th>structure</th><th>Dice</th><th>HD95 (mm)</th>" in page
    assert f'<td>mean</td><td class="num">{evaluation["mean_dice"]:.3f}</td>' in page
    assert "&quot;labeled_volumes&quot;: 1" in page  # the config, escaped


def test_a_pretraining_report_and_the_command(ssmtl_cli, pretrained_run, tmp_path):
    out = tmp_path / "pages" / "pre.html"
    result = ssmtl_cli("report", pretrained_run, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert " ".join(result.stdout.split()).startswith(f"report: {out} (")
    page = out.read_text()
    assert _self_contained(page) and len(_images(page)) == 1
    assert "pre-training has no score of its own" in page and "<td>contrastive, order</td>" in page


def test_a_report_without_a_readable_cache_says_so(finetuned_run, tmp_path):
    run = tmp_path / "ft"
    shutil.copytree(finetuned_run, run)
    evaluation = json.loads((run / "eval.json").read_text())
    evaluation["data"] = str(tmp_path / "gone.h5")
    (run / "eval.json").write_text(json.dumps(evaluation))
    page = write_report(run, registry=get_registry()).read_text()
    assert "No overlays:" in page and "gone.h5: cache file not found" in page
    assert str(tmp_path) not in page  # the message names the file, not where it was


def test_not_a_run(tmp_path):
    with pytest.raises(SsmtlError, match="neither a finished pre-training run"):
        write_report(tmp_path, registry=get_registry())
    with pytest.raises(SsmtlError, match="no such run or benchmark directory"):
        write_report(tmp_path / "missing", registry=get_registry())


@pytest.mark.slow
def test_a_benchmark_report(ssmtl_cli, ssmtl_tiny_cache, tmp_path):
    out = tmp_path / "bench"
    result = ssmtl_cli("--no-plugins", "benchmark", "--data", ssmtl_tiny_cache, "--methods", "scratch,contrastive",
                       "--labeled-volumes", "1", "--draws", "1", "--out", out, "--pretrain-steps", "2",
                       "--steps", "2", "--set", "pretrain.model.base_channels=4", "--set", "pretrain.model.depth=2")
    assert result.exit_code == 0, result.output
    page = write_report(out, registry=get_registry()).read_text()
    assert _self_contained(page)
    assert len(_images(page)) == 2  # Dice vs labels, and the one pre-training's curves
    assert "<h2>Dice vs label budget</h2>" in page and "<h3>contrastive/seed0-" in page  # pretrain/<method>/<run>
    assert page.count("<table>") >= 2 and "<td>contrastive</td>" in page  # the results tables, as HTML


def test_pick_volumes_and_markdown():
    scored = [{"volume": v, "mean_dice": d} for v, d in (("a", 0.5), ("b", 0.9), ("c", 0.1), ("d", 0.7), ("e", None))]
    assert [(rank, v["volume"]) for rank, v in pick_volumes(scored)] == [("best", "b"), ("median", "a"), ("worst", "c")]
    assert [(rank, v["volume"]) for rank, v in pick_volumes(scored[:1])] == [("best", "a")]
    assert pick_volumes([]) == []
    converted = html.markdown("# Title\n\nSome `code` and **bold** <text>.\n\n| m | 1 labeled |\n|---|---|\n| x | 0.5 ± 0.1 |\n")
    assert converted == ("<h2>Title</h2>\n<p>Some <code>code</code> and <strong>bold</strong> &lt;text&gt;.</p>\n"
                         "<table><tr><th>m</th><th>1 labeled</th></tr><tr><td>x</td><td>0.5 ± 0.1</td></tr></table>")
