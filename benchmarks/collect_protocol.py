"""Copy a protocol run's results into the repository (without its runs, checkpoints or caches).

    python benchmarks/collect_protocol.py benchmarks/out/cpu benchmarks/results/cpu_protocol_draws

For every setting (a folder of OUT with a results.json): results.json with its ``summary``
recomputed from the raw ``cells`` by this checkout's ``summarise_cells`` (the cells, the raw
record, are copied unchanged; the summary is derived from them, so a summary field added after
the run, such as the median weight change, appears; so are the draws done, which results written
by older code gave as the draws planned), results.md rendered from it, and
dice_vs_labels.png. Then plan.json and plan.md (the pilot's plan), the logs of every benchmark
process (which runs each made or reused, and when) and verdict.md, written by
``benchmarks/verdict.py`` over DEST. Refuses to write anything that names an absolute local path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from ssmtl.data.shareable import without_paths
from ssmtl.experiments.config import BenchmarkConfig
from ssmtl.experiments.results import SCRATCH, draws_done, render_markdown, summarise_cells

REFERENCES = (SCRATCH, "contrastive")  # what `ssmtl benchmark` compares with: scratch and the default baseline


def _check(text: str, where: Path) -> str:
    """``text``, unless it names an absolute local path (what shareable files never do)."""
    clean = without_paths(text)
    if clean != text:
        first = next(i for i, (a, b) in enumerate(zip(text, clean)) if a != b)
        raise SystemExit(f"error: {where}: names an absolute local path ({text[first:first + 60]!r}); not copied")
    return text


def collect(out: Path, dest: Path) -> list[str]:
    written = []
    for results_json in sorted(out.glob("*/results.json")):
        setting = results_json.parent
        results = json.loads(results_json.read_text())
        results["summary"] = summarise_cells(results["cells"], references=REFERENCES)
        # results written mid-run by older code named the draws planned as done; the recorded config
        # holds file names, not paths, so it is read back without validation
        config = BenchmarkConfig.model_construct(**results["config"])
        results["design"] = {**results["design"], **draws_done(results["cells"], config.draws, config.pretrain_runs)}
        target = dest / setting.name
        target.mkdir(parents=True, exist_ok=True)
        text = json.dumps(results, indent=2, allow_nan=True) + "\n"
        (target / "results.json").write_text(_check(text, results_json))
        (target / "results.md").write_text(_check(render_markdown(results) + "\n", results_json))
        if (setting / "dice_vs_labels.png").is_file():
            shutil.copy2(setting / "dice_vs_labels.png", target / "dice_vs_labels.png")
        written.append(setting.name)
    for name in ("plan.json", "plan.md"):
        if (out / name).is_file():
            (dest / name).write_text(_check((out / name).read_text(), out / name))
    if (out / "logs").is_dir():
        (dest / "logs").mkdir(parents=True, exist_ok=True)
        for log in sorted((out / "logs").glob("*.log")):
            (dest / "logs" / log.name).write_text(_check(log.read_text(), log))
    verdict = subprocess.run([sys.executable, str(Path(__file__).with_name("verdict.py")), str(dest)],
                             capture_output=True, text=True, check=True).stdout
    (dest / "verdict.md").write_text(_check(verdict, dest / "verdict.md"))
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python benchmarks/collect_protocol.py OUT DEST", file=sys.stderr)
        return 2
    out, dest = map(Path, argv)
    if not out.is_dir() or not list(out.glob("*/results.json")):
        print(f"error: {out}: no setting with a results.json (run the protocol first)", file=sys.stderr)
        return 2
    settings = collect(out, dest)
    print(f"{dest}: {', '.join(settings)}, plan, logs, verdict.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
