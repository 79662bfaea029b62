"""The harness itself must be able to fail: each promise it checks is broken here on purpose."""

from __future__ import annotations

import sys

from robustness.harness import Case, limit_file_size, run_case


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_clean_refusal_holds(tmp_path):
    outcome = run_case(Case("clean", _python("import sys; print('error: bad.h5: not a cache', file=sys.stderr); sys.exit(2)"),
                            message="bad.h5"))
    assert outcome.problems == []


def test_each_broken_promise_is_reported(tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("original")
    out = tmp_path / "out"
    code = (f"import pathlib, sys; pathlib.Path({str(source)!r}).write_text('changed'); "
            f"pathlib.Path({str(out)!r}).mkdir(); pathlib.Path({str(out)!r}, 'x.tmp-1').write_text(''); "
            "raise ValueError('boom')")
    outcome = run_case(Case("broken", _python(code), message="never said", inputs=[source], absent=[out], watch=[tmp_path]))
    text = "; ".join(outcome.problems)
    for expected in ("exit code 1", "traceback", "0 error: lines", "never said", "left behind", "temporary files", "inputs changed"):
        assert expected in text, text


def test_the_file_size_limit_turns_big_writes_into_efbig(tmp_path):
    target = tmp_path / "big.bin"
    code = (f"import errno, sys\ntry:\n    open({str(target)!r}, 'wb').write(b'x' * 200_000)\n"
            "except OSError as e:\n    print('error: ' + errno.errorcode[e.errno], file=sys.stderr); sys.exit(2)")
    outcome = run_case(Case("efbig", _python(code), message="EFBIG", preexec=limit_file_size(100_000)))
    assert outcome.problems == [], outcome.stderr
