"""#27 class 5: config parsers with bounds. Every config format, every ``SSMTL_*`` value, every
``--set`` value and every manifest is parsed by ``ssmtl.api.structured``, which refuses deep nesting,
YAML alias bombs, huge integers, duplicate keys, oversized files, NUL characters and over-long CSV
fields with one line naming the file (or the variable), before a recursive parser or a consumer of
the result could pay for them."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from robustness.harness import Case, assert_all_held, run_cases, ssmtl_cli

from ssmtl.api import CONFIG_LIMITS, InputFileError, MANIFEST_LIMITS, parse_text, read_csv, TextLimits
from ssmtl.api.structured import parse_value

BIG = "9" * 5000


def alias_bomb(levels: int = 9) -> str:
    """The YAML "billion laughs": 9 aliases of 9 aliases of ... 9**levels strings in ~300 bytes."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ntasks: [*l{levels - 1}]\n"


HOSTILE_FILES = {
    "yaml nested 5000 deep": ("deep.yaml", "train: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 32 deep"),
    "json nested 100000 deep": ("deep.json", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested more than 32 deep"),
    "toml nested 5000 deep": ("deep.toml", "a = " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 32 deep"),
    "toml inline tables 5000 deep": ("tables.toml", "a = " + "{b = " * 5000 + "1" + "}" * 5000 + "\n", "nested more than 32 deep"),
    "yaml alias bomb in tasks": ("bomb.yaml", alias_bomb(), "expand to more than 100,000 values"),
    "yaml alias containing itself": ("self.yaml", "a: &a\n  b: *a\n", "the alias *a contains itself"),
    "toml 5000-digit integer": ("big.toml", f"seed = {BIG}\n", "a number of 5000 digits"),
    "yaml 5000-digit integer": ("big.yaml", f"seed: {BIG}\n", "a number of more than 100 digits"),
    "json 5000-digit integer": ("big.json", f'{{"seed": {BIG}}}', "a number of 5000 digits"),
    "yaml duplicate key": ("dup.yaml", "seed: 1\ntrain:\n  steps: 5\nseed: 2\n", "the key 'seed' is given twice (first on line 1)"),
    "json duplicate key": ("dup.json", '{"train": {"steps": 1, "steps": 2}}', "the key 'steps' is given twice"),
    "toml duplicate key": ("dup.toml", "seed = 1\nseed = 2\n", "cannot parse TOML"),
    "file over 1 MiB": ("huge.yaml", "seed: 1\n" + "#" * (1 << 20) + "\n", "more than the limit of 1,048,576"),
    "NUL in a json string": ("nul.json", '{"data": {"path": "a\\u0000b"}}', "a NUL character"),
}


#: the ones run through the command line (a subprocess each); every case is also checked in-process
THROUGH_THE_CLI = ("yaml nested 5000 deep", "json nested 100000 deep", "toml nested 5000 deep", "yaml alias bomb in tasks",
                   "toml 5000-digit integer", "json duplicate key")


def test_hostile_config_files_are_one_line_naming_them(tmp_path):
    cases = []
    for name in THROUGH_THE_CLI:
        file_name, text, message = HOSTILE_FILES[name]
        path = tmp_path / file_name
        path.write_text(text)
        cases.append(Case(name, ssmtl_cli("config", "show", "--config", path), message=f"{path}: cannot read config: ",
                          inputs=[path]))
    assert_all_held(run_cases(cases))


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_each_hostile_config_file_is_refused_with_its_reason(tmp_path, name):
    from ssmtl.api import ConfigError
    from ssmtl.settings.sources import read_config_file

    file_name, text, message = HOSTILE_FILES[name]
    path = tmp_path / file_name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_config_file(path)
    assert str(info.value).startswith(f"{path}: cannot read config: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_hostile_values_name_their_variable_or_flag():
    deep = "[" * 5000 + "]" * 5000

    def show(name, *args, env=None, message):
        return Case(name, ssmtl_cli("config", "show", *args), env=env or {}, message=message)

    cases = [
        show("5000-digit variable", env={"SSMTL_SEED": BIG}, message="environment variable SSMTL_SEED: a number of more than 100 digits"),
        show("deep variable", env={"SSMTL_TRAIN__STEPS": deep}, message="environment variable SSMTL_TRAIN__STEPS: lists or tables nested"),
        show("empty variable component", env={"SSMTL_TRAIN__": "5"}, message="environment variable SSMTL_TRAIN__: not a setting"),
        show("5000-digit --set", "--set", f"seed={BIG}", message="--set seed: a number of more than 100 digits"),
    ]
    assert_all_held(run_cases(cases))


@pytest.mark.parametrize("environ, message", [
    ({"SSMTL_AUGMENT": "{" + alias_bomb().replace("\n", ", ")[:-2] + "}"}, "environment variable SSMTL_AUGMENT: "),
    ({"SSMTL_TRAIN____STEPS": "5"}, "environment variable SSMTL_TRAIN____STEPS: not a setting"),
    ({"SSMTL_TRAIN__STEPS__": "5"}, "environment variable SSMTL_TRAIN__STEPS__: not a setting"),
    ({"SSMTL_TRAIN": "5", "SSMTL_TRAIN__STEPS": "3"}, "environment variable SSMTL_TRAIN"),
    ({"SSMTL_MODEL__NAME": '"a\\0b"'}, "environment variable SSMTL_MODEL__NAME: a NUL character"),  # YAML's escape
])
def test_every_environment_error_names_the_variable(ssmtl_tiny_cache, environ, message):
    from ssmtl.api import ConfigError
    from ssmtl.host.registry import get_registry
    from ssmtl.pretraining.config import resolve_pretrain_config

    with pytest.raises(ConfigError) as info:
        resolve_pretrain_config(registry=get_registry(), flags={"data.path": ssmtl_tiny_cache}, environ=environ)
    assert message in str(info.value)


@pytest.mark.parametrize("environ, message", [
    ({"SSMTL_FINETUNE__SEED": BIG}, "environment variable SSMTL_FINETUNE__SEED: a number of more than 100 digits"),
    ({"SSMTL_FINETUNE__TRAIN__STEPS": "[" * 40 + "]" * 40}, "environment variable SSMTL_FINETUNE__TRAIN__STEPS: lists or tables"),
])
def test_fine_tuning_variables_are_named_too(ssmtl_tiny_cache, tmp_path, environ, message):
    from ssmtl.api import ConfigError
    from ssmtl.downstream.config import resolve_finetune_config
    from ssmtl.host.registry import get_registry

    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        resolve_finetune_config(flags={"data": ssmtl_tiny_cache, "out": tmp_path / "ft"}, environ=environ,
                                registry=get_registry())


@pytest.mark.parametrize("name", ["SSMTL_FINETUNE__", "SSMTL_TRAIN__", "SSMTL_FINETUNE____SEED", "SSMTL___SEED"])
def test_the_command_line_check_names_a_variable_with_an_empty_component(name):
    from ssmtl.api import ConfigError
    from ssmtl.settings.sources import check_environment

    with pytest.raises(ConfigError, match=f"environment variable {name}: not a setting of ssmtl"):
        check_environment({"train": None, "seed": None, "finetune": ["seed", "train"]}, {name: "5"})


def test_manifests_are_parsed_within_the_same_bounds(tmp_path):
    def manifest(name, file_name, content, message):
        path = tmp_path / name.replace(" ", "-") / file_name
        path.parent.mkdir()
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        out = tmp_path / f"{name.replace(' ', '-')}.h5"
        return Case(name, ssmtl_cli("cache", "build", "--dataset", "manifest", "--path", path, "--out", out),
                    message=f"{path}: {message}", inputs=[path.parent], absent=[out], watch=[tmp_path])

    cases = [
        manifest("deep json", "m.json", "[" * 100_000 + "]" * 100_000, "lists or tables nested more than 32 deep"),
        manifest("NUL in a csv row", "m.csv", b"image,label\na.nii.gz,\nb\x00.nii.gz,\n", "line 3: a NUL byte"),
        manifest("csv field over the limit", "m.csv", "image,label\na.nii.gz,\n" + "x" * 140_000 + ",\n",
                 "line 3: cannot read CSV (field larger than field limit (131072))"),
    ]
    assert_all_held(run_cases(cases))


@pytest.mark.parametrize("file_name, content, message", [
    ("big.json", f'[{{"image": "a.nii.gz", "subject": {BIG}}}]', "a number of 5000 digits"),
    ("dup.json", '[{"image": "a.nii.gz", "image": "b.nii.gz"}]', "the key 'image' is given twice"),
    ("nul.json", '[{"image": "a\\u0000.nii.gz"}]', "a NUL character"),
    ("huge.csv", "image\n" + "a.nii.gz\n" * 100, "more than the limit of 100 bytes"),
])
def test_a_hostile_dataset_manifest_is_one_line_naming_it(tmp_path, monkeypatch, file_name, content, message):
    from ssmtl.plugins.datasets import manifest

    if file_name == "huge.csv":  # a small limit, so the test writes no 64 MiB file
        monkeypatch.setattr(manifest, "MANIFEST_LIMITS", MANIFEST_LIMITS.__class__(max_bytes=100))
    path = tmp_path / file_name
    path.write_text(content)
    with pytest.raises(InputFileError) as info:
        manifest.read_manifest(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


@pytest.mark.parametrize("file_name, content, message", [
    ("deep.json", "[" * 100_000 + "]" * 100_000, "nested more than 32 deep"),
    ("big.json", f'[{{"image": "a.nii.gz", "modality": {BIG}}}]', "a number of 5000 digits"),
    ("dup.json", '{"volumes": [], "volumes": []}', "given twice"),
    ("nul.csv", "image\nscan\x00.nii.gz\n", "line 2: a NUL byte"),
    ("long.csv", "image\n" + "x" * 140_000 + "\n", "field larger than field limit"),
])
def test_a_hostile_predict_manifest_is_one_error_for_that_input(tmp_path, file_name, content, message):
    """What predict lists: the manifest becomes one input with an error, the other inputs go on."""
    from ssmtl.downstream.predict_inputs import list_scans, scan_openers
    from ssmtl.host.registry import get_registry

    bad = tmp_path / file_name
    bad.write_text(content)
    scans = list_scans([bad, tmp_path / "other.nii.gz"], scan_openers(get_registry()))
    assert [s.path for s in scans] == [bad, tmp_path / "other.nii.gz"]
    assert message in scans[0].error and scans[0].item is None
    assert scans[1].error == "file or folder not found"


def test_the_alias_bomb_is_refused_before_it_is_built():
    """The bomb's 9**9 strings would take gigabytes in the first consumer that walks them; the
    parser stops at the limit while composing, with a few MB of work."""
    tracemalloc.start()
    with pytest.raises(InputFileError, match="expand to more than 100,000 values"):
        parse_text(alias_bomb(), "yaml", "bomb.yaml")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 << 20, f"{peak / 2**20:.0f} MiB"


def test_honest_anchors_merges_and_numbers_still_parse():
    text = "base: &base {steps: 3, lr: 0.001}\ntrain:\n  <<: *base\n  steps: 5\nseed: 4294967295\nsizes: [*base, *base]\n"
    data = parse_text(text, "yaml", "c.yaml")
    assert data["train"] == {"steps": 5, "lr": 0.001}  # a merged key overridden by the table's own: YAML's rule
    assert data["seed"] == 4294967295 and data["sizes"] == [{"steps": 3, "lr": 0.001}] * 2
    assert parse_text('{"a": [[1, 2], {"b": "[[[[["}], "c": "}}}}"}', "json", "c.json") == {
        "a": [[1, 2], {"b": "[[[[["}], "c": "}}}}"}
    assert parse_text('a = "[[[[[[" # [[[[[[\nb = [1, 2]\n[t]\nc = 1_000\n', "toml", "c.toml") == {
        "a": "[[[[[[", "b": [1, 2], "t": {"c": 1000}}
    # brackets inside strings (escaped quotes included) do not count towards the depth
    assert parse_text(f'{{"a": "\\"{"[" * 1000}"}}', "json", "c.json") == {"a": '"' + "[" * 1000}
    assert parse_text(f'a = "\\"{"[" * 1000}"\nb = \'{"{" * 1000}\'\n', "toml", "c.toml") == {
        "a": '"' + "[" * 1000, "b": "{" * 1000}
    # many values without an alias: said as such, not as a bomb
    with pytest.raises(InputFileError, match=r"line 1: it holds more than 1,000 values$"):
        parse_text("\n".join(f"k{i}: [1, 2, 3, 4]" for i in range(200)), "yaml", "c.yaml", TextLimits(1 << 20, max_nodes=1000))
    assert parse_value("[1, 2]", "x") == [1, 2] and parse_value("{unclosed", "x") == "{unclosed"


def test_the_limits_are_exact():
    nested = lambda n: "[" * n + "]" * n  # noqa: E731
    assert parse_text(nested(CONFIG_LIMITS.max_depth), "json", "x") is not None
    with pytest.raises(InputFileError, match="nested more than 32 deep"):
        parse_text(nested(CONFIG_LIMITS.max_depth + 1), "json", "x")
    # YAML counts lists and tables as JSON counts brackets: a table of 31 lists holding a number is 32 deep
    assert parse_text("a: " + "[" * 31 + "1" + "]" * 31, "yaml", "x")
    with pytest.raises(InputFileError, match="nested more than 32 deep"):
        parse_text("a: " + "[" * 32 + "1" + "]" * 32, "yaml", "x")
    anchored = lambda outer: "a: &a " + "[" * 20 + "1" + "]" * 20 + "\nb: " + "[" * outer + "*a" + "]" * outer  # noqa: E731
    assert parse_text(anchored(11), "yaml", "x")  # 1 + 11 + 20 = 32 deep through the alias
    with pytest.raises(InputFileError, match="its aliases expand to lists or tables nested more than 32 deep"):
        parse_text(anchored(12), "yaml", "x")
    digits = "1" * CONFIG_LIMITS.max_digits
    assert parse_text(f"a = {digits}", "toml", "x") == {"a": int(digits)}
    with pytest.raises(InputFileError, match="digits"):
        parse_text(f"a = {digits}1", "toml", "x")
    assert MANIFEST_LIMITS.max_bytes > CONFIG_LIMITS.max_bytes


def test_csv_rows_name_their_lines():
    header, rows = read_csv("image;label\na.nii.gz;a_seg.nii.gz\n\"b\nc.nii.gz\";\n", Path("m.csv"))
    assert header == ["image", "label"]
    assert rows == [("line 2", {"image": "a.nii.gz", "label": "a_seg.nii.gz"}), ("line 4", {"image": "b\nc.nii.gz", "label": ""})]
    assert read_csv("", "m.csv") == (None, [])
