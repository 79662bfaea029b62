"""Issue 27, class 1: outputs of export, report and compare that destroyed runs.

Every hostile ``--out`` ends in one error line (exit 2) and leaves every run and cache byte
for byte as it was; the outputs that are allowed write their own files and nothing else.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from robustness.harness import Case, assert_all_held, fingerprint, run_cases, ssmtl_cli
from ssmtl.storage.outputs import lock_path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, ssmtl_tiny_cache, pretrained_run, finetuned_run) -> Path:
    """runs/{pre,ft,other/ft} beside data/phantom.h5 (the runs' cache, as they recorded it, is the session's)."""
    root = tmp_path_factory.mktemp("outputs")
    runs = root / "runs"
    shutil.copytree(pretrained_run, runs / "pre")
    shutil.copytree(finetuned_run, runs / "ft")
    shutil.copytree(finetuned_run, runs / "other" / "ft")
    (root / "data").mkdir()
    shutil.copy(ssmtl_tiny_cache, root / "data" / "phantom.h5")
    (root / "notes.txt").write_text("mine")
    (root / "folder").mkdir()
    return root


@contextlib.contextmanager
def _held_by_another_process(lock: Path) -> Iterator[int]:
    code = ("import sys; from ssmtl.storage.files import exclusive_lock\n"
            f"with exclusive_lock({str(lock)!r}, 'x'):\n    print('locked', flush=True)\n    sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_no_export_or_report_writes_over_a_run_a_cache_or_a_file_it_did_not_create(workspace, ssmtl_tiny_cache):
    runs, ft, pre = workspace / "runs", workspace / "runs" / "ft", workspace / "runs" / "pre"
    protected = [runs, ssmtl_tiny_cache, workspace / "data", workspace / "notes.txt"]
    report, export = ("report", ft), ("export", ft)

    def case(name, *args, message, absent=(), env=None):
        return Case(name, ssmtl_cli(*args), message=message, inputs=protected, absent=list(absent), watch=[workspace],
                    env=env or {})

    cases = [
        case("report over the run's weights", *report, "--out", ft / "model.safetensors", message="is inside the input run"),
        case("report over the run's record", *report, "--out", ft / "run.json", message="is inside the input run"),
        case("report over the run's cache", *report, "--out", ssmtl_tiny_cache, message="is the input cache of the run"),
        case("report over another .h5", *report, "--out", workspace / "data" / "phantom.h5",
             message="exists and is not part of an earlier report page"),
        case("report over a file of the user", *report, "--out", workspace / "notes.txt",
             message="even with --force"),
        case("report --out a folder", *report, "--out", workspace / "folder",
             message="is a folder; the report page is one file: give a file path such as"),
        case("report into another run", *report, "--out", pre / "page.html", message=f"lies inside the run {pre}",
             absent=[pre / "page.html"]),
        case("export over the run it exports", *export, "--out", ft, "--force", message="is the input run"),
        case("export over the folder holding the runs", *export, "--out", runs, "--force", message="contains the input run"),
        case("export over the run's checkpoints", *export, "--out", ft / "checkpoints", "--force",
             message="is inside the input run"),
        case("export over another run", *export, "--out", pre, "--force", message="which is not part of an earlier export folder"),
        case("export into another run", *export, "--out", pre / "mine", message=f"lies inside the run {pre}",
             absent=[pre / "mine"]),
        case("export --out a file", *export, "--out", workspace / "notes.txt", "--force",
             message="is a file; the export folder is a folder"),
        case("export --size 0", *export, "--size", "0", "--out", workspace / "new", message="--size 0: expected a positive",
             absent=[workspace / "new"]),
        case("push without a token", *export, "--push-to-hub", "me/model", "--out", workspace / "pushed",
             message="no Hugging Face token", absent=[workspace / "pushed"],
             env={"HF_TOKEN": "", "HF_HOME": str(workspace / "hf-home"), "HF_HUB_OFFLINE": "1"}),
        case("push to a malformed repository", *export, "--push-to-hub", "model", "--out", workspace / "pushed",
             message="give the repository as OWNER/NAME", absent=[workspace / "pushed"]),
    ]
    busy = workspace / "busy"
    with _held_by_another_process(lock_path(busy)) as holder:
        cases.append(case("a second export into a busy output", *export, "--out", busy, message=f"is in use by PID {holder}",
                          absent=[busy]))
        assert_all_held(run_cases(cases, workers=2))
    assert sorted(p.name for p in workspace.iterdir()) == ["data", "folder", "notes.txt", "runs"]


def test_the_allowed_outputs_leave_every_run_byte_identical(workspace, ssmtl_cli):
    runs, ft = workspace / "runs", workspace / "runs" / "ft"
    before = fingerprint([runs])
    result = ssmtl_cli("export", ft)  # the default output: the run's own place for exports
    assert result.exit_code == 0, result.stderr
    result = ssmtl_cli("report", ft, "--out", workspace / "pages" / "ft.html")
    assert result.exit_code == 0, result.stderr
    assert ssmtl_cli("report", ft, "--out", workspace / "pages" / "ft.html").exit_code == 0  # its own page: drawn again
    after = fingerprint([runs])
    hub = str(ft / "hub")
    assert {k: v for k, v in after.items() if not k.startswith(hub)} == before
    assert sorted(Path(k).relative_to(ft / "hub").as_posix() for k in after if k.startswith(hub)) == sorted(
        f"finetuned-safetensors/{name}" for name in ("LICENSE", "README.md", "config.json", "model.safetensors",
                                                     "ssmtl-export.json"))
    again = ssmtl_cli("export", ft)
    assert again.exit_code == 2 and "holds an earlier export folder; pass --force to replace it" in again.stderr
    assert ssmtl_cli("export", ft, "--force").exit_code == 0
    shutil.rmtree(ft / "hub")
    shutil.rmtree(workspace / "pages")
    assert fingerprint([runs]) == before


def test_compare_keeps_runs_with_the_same_folder_name_apart(workspace, ssmtl_cli):
    from ssmtl.publish.compare import comparison_labels

    ft, other = workspace / "runs" / "ft", workspace / "runs" / "other" / "ft"
    result = ssmtl_cli("compare", ft, other)
    assert result.exit_code == 0, result.stderr
    header = " ".join(result.stdout.split())
    assert "runs/ft" in header and "other/ft" in header
    assert [label for label, _ in comparison_labels([str(ft), str(other), f"mine={ft.parent / 'pre'}"])] == \
        ["runs/ft", "other/ft", "mine"]
    twice = ssmtl_cli("compare", ft, f"again={ft}")
    assert twice.exit_code == 2 and "is given twice" in twice.stderr
    clash = ssmtl_cli("compare", f"a={ft}", f"a={other}")
    assert clash.exit_code == 2 and "the label 'a' names two runs" in clash.stderr


def test_the_rule_itself(tmp_path):
    """check_output on folders alone: runs nested in a benchmark folder, homes, markers, kinds."""
    from ssmtl.api.errors import SsmtlError
    from ssmtl.storage.outputs import check_output, OutputKind, write_marker

    folder_kind = OutputKind("export folder", folder=True, marker="ssmtl-export.json", home="hub")
    bench = tmp_path / "bench"
    run = bench / "finetune" / "a"
    run.mkdir(parents=True)
    (bench / "ssmtl-run.json").write_text('{"kind": "benchmark"}')
    (run / "ssmtl-run.json").write_text('{"kind": "finetune"}')
    inputs = [("run", run)]
    check_output(run / "hub" / "x", inputs, folder_kind)  # the run's home, inside the benchmark holding it
    for out, message in ((bench / "finetune" / "mine", f"lies inside the run {bench}"),
                         (run / "elsewhere", "is inside the input run"), (bench, "contains the input run")):
        with pytest.raises(SsmtlError, match=message):
            check_output(out, inputs, folder_kind, force=True)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "model.pt").write_bytes(b"x")
    write_marker(earlier, folder_kind)
    with pytest.raises(SsmtlError, match="holds an earlier export folder; pass --force"):
        check_output(earlier, inputs, folder_kind)
    check_output(earlier, inputs, folder_kind, force=True)
    (earlier / "notes.txt").write_text("added by hand")
    with pytest.raises(SsmtlError, match="holds 'notes.txt', which is not part of an earlier export folder"):
        check_output(earlier, inputs, folder_kind, force=True)
    (earlier / "notes.txt").unlink()
    (earlier / "ssmtl-export.json").write_text('{"kind": "report page", "files": ["model.pt"]}')  # another kind's marker
    with pytest.raises(SsmtlError, match="which is not part of an earlier export folder"):
        check_output(earlier, inputs, folder_kind, force=True)
