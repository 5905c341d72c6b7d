"""The manifest: loading, every validation rule, sweeps, names, job ids and `after`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from mqfleet import defaults
from mqfleet.errors import AmbiguousError, ManifestError, NotFoundError
from mqfleet.manifest.builtins import BUILTIN_HYPER, trainer_argv
from mqfleet.manifest.jobs import MAX_SWEEP_JOBS
from mqfleet.manifest.load import load_manifest, parse_manifest, validate_manifest
from mqfleet.manifest.types import FleetSettings, Manifest, job_id
from mqfleet.manifest.values import Checker

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "manifests"

TRAINERS = """
[trainers.gbt]
builtin = "xgboost"

[trainers.mlp]
builtin = "torch-mlp"
"""


def parse(body: str, *, trainers: str = TRAINERS) -> Manifest:
    return parse_manifest(trainers + body, "test.toml")


def problems(body: str, *, trainers: str = TRAINERS) -> dict[str, str]:
    """place -> message of every problem; fails the test when the manifest is valid."""
    with pytest.raises(ManifestError) as info:
        parse(body, trainers=trainers)
    assert info.value.source == "test.toml"
    return {p.place: p.message for p in info.value.problems}


def gbt_defaults(**overrides: object) -> dict[str, object]:
    return {name: p.default for name, p in BUILTIN_HYPER["xgboost"].items()} | overrides


# ---- loading ----------------------------------------------------------------------------------


def test_example_fleet_manifest_validates_and_shows_every_section() -> None:
    m = load_manifest(ROOT / "examples" / "fleet.toml")
    assert {t.builtin for t in m.trainers.values()} == {"xgboost", "torch-mlp", None}
    assert len(m.hosts) == 2
    assert any(j.after for j in m.jobs)
    assert any(place.startswith("sweeps[") for place in m.places.values())


def test_valid_manifest_keeps_its_text_and_source_and_fleet_settings() -> None:
    path = DATA / "valid.toml"
    m = load_manifest(path)
    assert m.source == str(path)
    assert m.text == path.read_text()
    assert m.fleet == FleetSettings(max_attempts=2, lease_s=30.0, grace_s=10.0, commit="abc123")
    assert isinstance(m.fleet.lease_s, float)


def test_fleet_defaults_apply_when_the_table_is_absent() -> None:
    assert parse("").fleet == FleetSettings()
    assert (FleetSettings().max_attempts, FleetSettings().lease_s) == (defaults.MAX_ATTEMPTS, defaults.LEASE_S)


def test_every_fleet_key_reads_back_in_its_fields_type() -> None:
    text = """[fleet]
max_attempts = 4
lease_s = 30
grace_s = 2.5
commit = "abc"
timeout_s = 60
stall_s = 7
retry_backoff_s = 0
quarantine_after = 3
cancel_unsatisfiable = true
log_max_lines = 100
keep_history = false
keep_days = 1
checkpoint_interval_s = 5
checkpoint_max_mib = 64
"""
    fleet = parse(text).fleet
    assert fleet == FleetSettings(4, 30.0, 2.5, "abc", 60.0, 7.0, 0.0, 3, True, 100, False, 1.0, 5.0, 64.0)
    for f in dataclasses.fields(FleetSettings):
        value = getattr(fleet, f.name)
        assert type(value) is {"int": int, "num": float, "str": str, "boo": bool}[f.metadata["kind"][:3]], f.name


def test_missing_file_is_one_problem_that_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "nope.toml")
    assert len(info.value.problems) == 1
    assert "no such file" in info.value.problems[0].message
    assert str(tmp_path / "nope.toml") in str(info.value)


def test_unreadable_file_is_one_problem(tmp_path: Path) -> None:
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "bin.toml")
    assert len(info.value.problems) == 1
    assert "UTF-8" in info.value.problems[0].message


def test_toml_syntax_error_is_one_problem_with_its_line_and_column() -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(DATA / "syntax_error.toml")
    (problem,) = info.value.problems
    assert "TOML syntax error" in problem.message
    assert "line 6" in problem.message and "column" in problem.message


def test_validate_manifest_returns_no_problems_for_a_valid_text_and_all_of_them_otherwise() -> None:
    assert validate_manifest((DATA / "valid.toml").read_text()) == []
    assert [p.place for p in validate_manifest((DATA / "unknown_key.toml").read_text())] == ["jobs[0].priorty"]


# ---- unknown keys -----------------------------------------------------------------------------


def test_unknown_key_in_a_job_suggests_the_close_name() -> None:
    found = problems('[[jobs]]\nmodel = "gbt"\npriorty = 3\n')
    assert found == {"jobs[0].priorty": "unknown key (did you mean 'priority'?)"}


def test_unknown_key_with_no_close_name_lists_the_allowed_keys() -> None:
    found = problems("[fleet]\nzzz = 1\n")
    assert found["fleet.zzz"].startswith("unknown key (allowed here: max_attempts, lease_s, grace_s, commit, timeout_s, stall_s, ")


@pytest.mark.parametrize(
    ("body", "place"),
    [
        ("colour = 1\n", "colour"),
        ("[fleet]\nleese_s = 3\n", "fleet.leese_s"),
        ('[trainers.x]\nbuiltin = "xgboost"\nmodule = "a"\n', "trainers.x.module"),
        (
            '[trainers.x]\ncommand = ["a"]\n[trainers.x.hyper]\nk = { type = "int", defualt = 1 }\n',
            "trainers.x.hyper.k.defualt",
        ),
        ('[[hosts]]\nid = "h"\nslot = 2\n', "hosts[0].slot"),
        ('[[jobs]]\nmodel = "gbt"\nseeds = 2\n', "jobs[0].seeds"),
        ('[[sweeps]]\nmodel = "gbt"\nhyperr = {}\n', "sweeps[0].hyperr"),
    ],
)
def test_unknown_keys_are_refused_in_every_table(body: str, place: str) -> None:
    found = problems(body, trainers="" if "trainers" in body or not body.startswith("[") else TRAINERS)
    assert place in found
    assert found[place].startswith("unknown key")


# ---- types ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "place", "expected"),
    [
        ('seed = "3"', "jobs[0].seed", 'must be an integer, not "3"'),
        ("require_cuda = 1", "jobs[0].require_cuda", "must be true or false, not 1"),
        ('train_hosts = "a"', "jobs[0].train_hosts", "must be a list of strings"),
        ("allowed_hosts = [1]", "jobs[0].allowed_hosts", "must be a list of strings"),
        ("min_vram_gib = -1", "jobs[0].min_vram_gib", "must be at least 0"),
        ("priority = 1.5", "jobs[0].priority", "must be an integer, not 1.5"),
        ("mode = 3", "jobs[0].mode", "must be a string, not 3"),
        ("hyper = 3", "jobs[0].hyper", "must be a table"),
    ],
)
def test_job_fields_of_the_wrong_type_are_refused_saying_what_they_must_be(
    line: str, place: str, expected: str
) -> None:
    found = problems(f'[[jobs]]\nmodel = "gbt"\n{line}\n')
    assert expected in found[place]


def test_a_boolean_is_not_accepted_where_an_integer_is_declared() -> None:
    found = problems('[[jobs]]\nmodel = "gbt"\nseed = true\nhyper = { n_estimators = true }\n')
    assert found["jobs[0].hyper.n_estimators"] == "must be an integer (declared int), not true"
    assert "must be an integer, not true" in found["jobs[0].seed"]


def test_an_integer_is_accepted_for_a_float_hyperparameter_and_converted() -> None:
    (job,) = parse('[[jobs]]\nmodel = "gbt"\nhyper = { learning_rate = 1 }\n').jobs
    assert job.hyper["learning_rate"] == 1.0 and isinstance(job.hyper["learning_rate"], float)


def test_non_finite_floats_are_refused() -> None:
    found = problems('[[jobs]]\nmodel = "gbt"\nhyper = { learning_rate = nan }\n')
    assert "finite number" in found["jobs[0].hyper.learning_rate"]


@pytest.mark.parametrize(
    ("line", "place", "expected"),
    [
        ("max_attempts = 0", "fleet.max_attempts", "at least 1"),
        ("lease_s = 0", "fleet.lease_s", "greater than 0"),
        ("grace_s = -2.5", "fleet.grace_s", "greater than 0"),
        ("commit = 5", "fleet.commit", "must be a string"),
    ],
)
def test_fleet_settings_out_of_range_are_refused(line: str, place: str, expected: str) -> None:
    assert expected in problems(f"[fleet]\n{line}\n")[place]


def test_tables_and_arrays_of_the_wrong_shape_are_refused() -> None:
    found = problems('fleet = 3\njobs = "x"\n[[hosts]]\nid = "a"\n', trainers="")
    assert "must be a table" in found["fleet"]
    assert "[[jobs]]" in found["jobs"]


# ---- trainers ---------------------------------------------------------------------------------


def test_trainer_needs_exactly_one_of_builtin_or_command() -> None:
    found = problems("", trainers='[trainers.a]\nbuiltin = "xgboost"\ncommand = ["x"]\n[trainers.b]\n')
    assert "exactly one of" in found["trainers.a"]
    assert "exactly one of" in found["trainers.b"]


def test_unknown_builtin_is_refused_with_a_suggestion() -> None:
    found = problems("", trainers='[trainers.a]\nbuiltin = "xgbost"\n')
    assert "unknown built-in trainer" in found["trainers.a.builtin"]
    assert "did you mean 'xgboost'?" in found["trainers.a.builtin"]


@pytest.mark.parametrize("command", ["[]", '"python -m x"', '["{python}", 3]', '["a", ""]'])
def test_command_must_be_a_non_empty_list_of_non_empty_strings(command: str) -> None:
    found = problems("", trainers=f"[trainers.a]\ncommand = {command}\n")
    assert "non-empty list" in found["trainers.a.command"]


def test_command_trainer_takes_exactly_what_the_manifest_declares() -> None:
    trainers = """
[trainers.own]
command = ["{python}", "-m", "my.trainer"]
[trainers.own.hyper]
width = { type = "int", default = 32, min = 8 }
mask = { type = "str", default = "entmax", choices = ["sparsemax", "entmax"] }
sparse = { type = "bool", default = true }
warm = { type = "str" }
"""
    m = parse('[[jobs]]\nmodel = "own"\nhyper = { warm = "none", width = 64 }\n', trainers=trainers)
    assert m.jobs[0].hyper == {"width": 64, "mask": "entmax", "sparse": True, "warm": "none"}
    assert trainer_argv(m.trainer("own")) == ("{python}", "-m", "my.trainer")
    found = problems('[[jobs]]\nmodel = "own"\nhyper = { depth = 3 }\n', trainers=trainers)
    assert found["jobs[0].hyper.depth"].startswith(
        "not a hyperparameter of trainer 'own' (it takes: mask, sparse, warm, width)"
    )
    assert found["jobs[0].hyper.warm"].startswith("required: trainer 'own' declares no default")


@pytest.mark.parametrize(
    ("decl", "place", "expected"),
    [
        ("{ default = 1 }", "trainers.own.hyper.k.type", "is missing"),
        ('{ type = "integer" }', "trainers.own.hyper.k.type", "set type = one of 'int', 'float', 'str', 'bool'"),
        ('{ type = "int", default = 0, min = 1 }', "trainers.own.hyper.k.default", "out of bounds"),
        ('{ type = "int", min = 5, max = 1 }', "trainers.own.hyper.k", "above max"),
        ('{ type = "str", min = 1 }', "trainers.own.hyper.k.min", "only int and float"),
        ('{ type = "int", min = "1" }', "trainers.own.hyper.k.min", "must be a number"),
        ('{ type = "int", choices = [] }', "trainers.own.hyper.k.choices", "non-empty list"),
        ('{ type = "int", choices = [1, "two"] }', "trainers.own.hyper.k.choices[1]", "must be an integer"),
        ('{ type = "str", choices = ["a"], default = "b" }', "trainers.own.hyper.k.default", 'use one of: "a"'),
        ("3", "trainers.own.hyper.k", "must be a table"),
    ],
)
def test_command_trainer_declarations_are_checked(decl: str, place: str, expected: str) -> None:
    found = problems("", trainers=f'[trainers.own]\ncommand = ["x"]\n[trainers.own.hyper]\nk = {decl}\n')
    assert expected in found[place]


def test_builtin_declaration_may_change_the_default_and_narrow_bounds_and_choices() -> None:
    trainers = """
[trainers.gbt]
builtin = "xgboost"
[trainers.gbt.hyper]
n_estimators = { default = 300, min = 10, max = 1000 }
max_depth = { type = "int", choices = [4, 8] , default = 4 }
"""
    m = parse('[[jobs]]\nmodel = "gbt"\n', trainers=trainers)
    spec = m.trainer("gbt").hyper
    assert (spec["n_estimators"].default, spec["n_estimators"].min, spec["n_estimators"].max) == (300, 10, 1000)
    assert spec["max_depth"].choices == (4, 8)
    assert spec["learning_rate"] == BUILTIN_HYPER["xgboost"]["learning_rate"]
    assert m.jobs[0].hyper == gbt_defaults(n_estimators=300, max_depth=4)
    assert (
        "out of bounds; use a value in [10, 1000]"
        in problems('[[jobs]]\nmodel = "gbt"\nhyper = { n_estimators = 5000 }\n', trainers=trainers)[
            "jobs[0].hyper.n_estimators"
        ]
    )


def test_builtin_declaration_refuses_names_the_builtin_does_not_declare() -> None:
    found = problems("", trainers='[trainers.gbt]\nbuiltin = "xgboost"\n[trainers.gbt.hyper]\nlr = { default = 0.1 }\n')
    assert "not a hyperparameter of built-in trainer 'xgboost'" in found["trainers.gbt.hyper.lr"]
    assert "can only be narrowed" in found["trainers.gbt.hyper.lr"]


@pytest.mark.parametrize(
    ("decl", "place", "expected"),
    [
        ('{ type = "float" }', "trainers.gbt.hyper.max_depth.type", "keeps its type"),
        ("{ min = 0 }", "trainers.gbt.hyper.max_depth.min", "use a min at least 1"),
        ("{ max = 100 }", "trainers.gbt.hyper.max_depth.max", "use a max at most 64"),
        ("{ choices = [8, 128] }", "trainers.gbt.hyper.max_depth.choices[1]", "out of bounds"),
        ("{ min = 10 }", "trainers.gbt.hyper.max_depth", "built-in default 6 no longer fits"),
    ],
)
def test_builtin_declaration_refuses_widening_retyping_or_stranding_its_default(
    decl: str, place: str, expected: str
) -> None:
    found = problems("", trainers=f'[trainers.gbt]\nbuiltin = "xgboost"\n[trainers.gbt.hyper]\nmax_depth = {decl}\n')
    assert expected in found[place]


def test_jobs_of_a_broken_trainer_report_only_the_trainer() -> None:
    found = problems('[[jobs]]\nmodel = "a"\nhyper = { anything = 1 }\n', trainers='[trainers.a]\nbuiltin = "nope"\n')
    assert list(found) == ["trainers.a.builtin"]


# ---- hyperparameters of jobs ------------------------------------------------------------------


def test_undeclared_hyperparameter_names_the_trainer_and_what_it_takes() -> None:
    trainers = '[trainers.gbt]\ncommand = ["x"]\n[trainers.gbt.hyper]\n'
    trainers += 'learning_rate = { type = "float", default = 0.1 }\nmax_depth = { type = "int", default = 6 }\n'
    trainers += 'n_estimators = { type = "int", default = 100 }\n'
    body = (
        "".join(f'[[jobs]]\nmodel = "gbt"\nseed = {i}\n' for i in range(3))
        + '[[jobs]]\nmodel = "gbt"\nhyper = { lr = 0.1 }\n'
    )
    found = problems(body, trainers=trainers)
    assert found == {
        "jobs[3].hyper.lr": "not a hyperparameter of trainer 'gbt' (it takes: learning_rate, max_depth, n_estimators)"
    }


def test_close_misspelling_of_a_hyperparameter_gets_a_suggestion() -> None:
    found = problems('[[jobs]]\nmodel = "gbt"\nhyper = { learning_rat = 0.1 }\n')
    assert found["jobs[0].hyper.learning_rat"].endswith("(did you mean 'learning_rate'?)")


@pytest.mark.parametrize(
    ("hyper", "place", "expected"),
    [
        ("n_estimators = 0", "jobs[0].hyper.n_estimators", "0 is out of bounds; use a value in [1, 100000]"),
        ("learning_rate = 2.0", "jobs[0].hyper.learning_rate", "2.0 is out of bounds; use a value in [1e-06, 1.0]"),
        ('max_depth = "6"', "jobs[0].hyper.max_depth", 'must be an integer (declared int), not "6"'),
    ],
)
def test_hyperparameters_out_of_bounds_or_of_the_wrong_type_are_refused(hyper: str, place: str, expected: str) -> None:
    assert problems(f'[[jobs]]\nmodel = "gbt"\nhyper = {{ {hyper} }}\n')[place] == expected


def test_hyperparameter_outside_its_declared_choices_is_refused() -> None:
    trainers = '[trainers.own]\ncommand = ["x"]\n[trainers.own.hyper]\nopt = { type = "str", default = "adam", choices = ["adam", "sgd"] }\n'
    found = problems('[[jobs]]\nmodel = "own"\nhyper = { opt = "lbfgs" }\n', trainers=trainers)
    assert found["jobs[0].hyper.opt"] == '"lbfgs" is not allowed; use one of: "adam", "sgd"'


def test_trainer_defaults_are_applied_so_the_job_hyperparameters_are_complete() -> None:
    (job,) = parse('[[jobs]]\nmodel = "gbt"\nhyper = { max_depth = 3 }\n').jobs
    assert job.hyper == gbt_defaults(max_depth=3)


def test_unknown_trainer_is_refused_with_a_suggestion_and_the_declared_ones() -> None:
    found = problems('[[jobs]]\nmodel = "gbx"\n')
    assert found["jobs[0].model"].startswith("no trainer 'gbx' is declared (did you mean 'gbt'?)")
    assert "gbt, mlp" in found["jobs[0].model"]


def test_a_job_without_a_model_is_refused() -> None:
    assert "missing key 'model'" in problems('[[jobs]]\nmode = "x"\n')["jobs[0]"]


def test_a_list_of_values_in_a_job_points_to_sweeps() -> None:
    found = problems('[[jobs]]\nmodel = "gbt"\nseed = [1, 2]\nhyper = { max_depth = [3, 4] }\n')
    assert "[[sweeps]]" in found["jobs[0].seed"]
    assert "[[sweeps]]" in found["jobs[0].hyper.max_depth"]


# ---- other job fields -------------------------------------------------------------------------


def test_job_fields_take_their_defaults() -> None:
    (job,) = parse('[[jobs]]\nmodel = "gbt"\n').jobs
    assert (job.name, job.mode, job.split_recipe, job.target, job.seed, job.priority) == (
        "gbt-default",
        "default",
        "random",
        "target",
        0,
        0,
    )
    assert job.train_hosts == () and job.allowed_hosts == () and job.after == ()


@pytest.mark.parametrize("version", ["two", "2.", "v2.3", "2.3.x"])
def test_min_torch_must_be_a_dotted_version(version: str) -> None:
    found = problems(f'[[jobs]]\nmodel = "gbt"\nmin_torch = "{version}"\n')
    assert "dotted version" in found["jobs[0].min_torch"]


def test_min_torch_accepts_dotted_integers() -> None:
    assert parse('[[jobs]]\nmodel = "gbt"\nmin_torch = "2.3.1"\n').jobs[0].min_torch == "2.3.1"


def test_arch_takes_a_list_of_architectures_named_as_uname_prints_them() -> None:
    job = parse('[[jobs]]\nmodel = "gbt"\narch = ["aarch64", "arm64", "AMD64"]\n').jobs[0]
    assert job.arch == ("aarch64", "x86_64")  # aliases read as the advert names them, each once
    assert job.to_dict()["arch"] == ["aarch64", "x86_64"]
    plain = parse('[[jobs]]\nmodel = "gbt"\n').jobs[0]
    assert plain.arch == () and "arch" not in plain.to_dict()  # specs without it stay as they were
    assert parse('[[jobs]]\nmodel = "gbt"\narch = []\n').jobs[0] == plain  # empty: any, as allowed_hosts


def test_arch_does_not_change_the_job_id() -> None:
    with_arch = parse('[[jobs]]\nmodel = "gbt"\narch = ["aarch64"]\n').jobs[0]
    assert with_arch.id == parse('[[jobs]]\nmodel = "gbt"\n').jobs[0].id


@pytest.mark.parametrize(("value", "place", "words"), [
    ('["aarh64"]', "jobs[0].arch[0]", "did you mean 'aarch64'"),
    ('["x86_64", "sparc"]', "jobs[0].arch[1]", "unknown CPU architecture"),
    ('"aarch64"', "jobs[0].arch", "list of strings"),
])
def test_a_bad_arch_is_refused_at_its_place_with_the_fix(value: str, place: str, words: str) -> None:
    assert words in problems(f'[[jobs]]\nmodel = "gbt"\narch = {value}\n')[place]


def test_a_sweeps_arch_applies_to_every_job_it_expands_to() -> None:
    m = parse('[[sweeps]]\nmodel = "gbt"\narch = ["aarch64"]\nseed = [1, 2, 3]\n')
    assert [j.arch for j in m.jobs] == [("aarch64",)] * 3
    assert "sweeps[0].arch[0]" in problems('[[sweeps]]\nmodel = "gbt"\narch = ["pdp11"]\nseed = [1, 2]\n')


def test_same_commit_needs_a_commit_in_fleet() -> None:
    found = problems('[[jobs]]\nmodel = "gbt"\nsame_commit = true\n')
    assert "[fleet] has no commit" in found["jobs[0].same_commit"]
    assert parse('[fleet]\ncommit = "abc"\n[[jobs]]\nmodel = "gbt"\nsame_commit = true\n').jobs[0].same_commit


def test_empty_mode_and_name_are_refused() -> None:
    found = problems('[[jobs]]\nmodel = "gbt"\nmode = ""\nname = ""\n')
    assert set(found) == {"jobs[0].mode", "jobs[0].name"}


# ---- hosts ------------------------------------------------------------------------------------


def test_host_policy_takes_defaults_and_is_found_by_id() -> None:
    m = parse('[[hosts]]\nid = "pi"\nlabels = ["arm"]\n')
    policy = m.hosts.get("pi")
    assert policy is not None
    assert (policy.allow_jobs, policy.deny_jobs, policy.slots, policy.labels) == (("*",), (), 1, ("arm",))
    assert m.hosts.get("other") is None


def test_duplicate_host_ids_are_a_problem_naming_both_places() -> None:
    found = problems('[[hosts]]\nid = "pi"\n[[hosts]]\nid = "box"\n[[hosts]]\nid = "pi"\n')
    assert found == {"hosts[2].id": "host 'pi' is also declared at hosts[0]; merge the two entries"}


@pytest.mark.parametrize(
    ("body", "place", "expected"),
    [
        ("slots = 2", "hosts[0]", "missing key 'id'"),
        ('id = "a/b"', "hosts[0].id", "cannot be a host id"),
        ('id = "a b"', "hosts[0].id", "cannot be a host id"),
        ('id = "a"\nslots = 0', "hosts[0].slots", "at least 1"),
        ('id = "a"\nallow_jobs = "gbt"', "hosts[0].allow_jobs", "list of strings"),
    ],
)
def test_host_entries_are_checked(body: str, place: str, expected: str) -> None:
    assert expected in problems(f"[[hosts]]\n{body}\n")[place]


# ---- job ids ----------------------------------------------------------------------------------


def test_job_id_is_the_sha256_of_the_canonical_json_of_its_identity_fields() -> None:
    hyper = {"b": 1.5, "a": 1}
    doc = {
        "dataset": "d.csv",
        "hyper": {"a": 1, "b": 1.5},
        "mode": "m",
        "model": "gbt",
        "seed": 3,
        "split_recipe": "host",
        "train_hosts": ["x", "y"],
    }
    expected = hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()
    assert job_id("gbt", "m", hyper, "host", ("x", "y"), 3, "d.csv") == expected


def test_job_ids_do_not_depend_on_the_order_of_jobs_or_of_keys_in_the_file() -> None:
    a = '[[jobs]]\nmodel = "gbt"\nmode = "a"\nhyper = { max_depth = 3, learning_rate = 0.2 }\n'
    b = '[[jobs]]\nmode = "b"\nmodel = "mlp"\n'
    a_reordered = '[[jobs]]\nhyper = { learning_rate = 0.2, max_depth = 3 }\nmode = "a"\nmodel = "gbt"\n'
    first = {j.name: j.id for j in parse(a + b).jobs}
    second = {j.name: j.id for j in parse(b + a_reordered).jobs}
    assert first == second


def test_job_id_is_the_same_when_a_default_is_written_explicitly() -> None:
    implicit = parse('[[jobs]]\nmodel = "gbt"\n').jobs[0]
    explicit = parse(
        '[[jobs]]\nmodel = "gbt"\nmode = "default"\nseed = 0\nsplit_recipe = "random"\ndataset = ""\n'
        "hyper = { n_estimators = 100, learning_rate = 0.1, subsample = 1 }\n"
    ).jobs[0]
    assert implicit.id == explicit.id


def test_fields_outside_the_identity_do_not_change_the_id_but_identity_fields_do() -> None:
    base = parse('[[jobs]]\nmodel = "gbt"\n').jobs[0].id
    assert parse('[[jobs]]\nmodel = "gbt"\npriority = 5\nrequire_cuda = true\nname = "x"\n').jobs[0].id == base
    for line in ("seed = 1", 'dataset = "other.csv"', 'train_hosts = ["h"]', 'split_recipe = "host"', 'mode = "m"'):
        assert parse(f'[[jobs]]\nmodel = "gbt"\n{line}\n').jobs[0].id != base, line


def test_two_jobs_with_the_same_id_are_a_problem_naming_both_places() -> None:
    found = problems(
        '[[jobs]]\nmodel = "gbt"\nname = "a"\n[[jobs]]\nmodel = "mlp"\n[[jobs]]\nmodel = "gbt"\nseed = 0\n'
    )
    assert list(found) == ["jobs[2]"]
    assert found["jobs[2]"].startswith("jobs[2] is the same job as jobs[0]")


# ---- names ------------------------------------------------------------------------------------


def test_default_names_are_model_and_mode_made_unique_with_suffixes() -> None:
    body = "".join(f'[[jobs]]\nmodel = "gbt"\nmode = "m"\nseed = {i}\n' for i in range(3))
    assert [j.name for j in parse(body).jobs] == ["gbt-m", "gbt-m-2", "gbt-m-3"]


def test_an_explicit_name_keeps_itself_and_a_default_name_steps_aside() -> None:
    body = '[[jobs]]\nmodel = "gbt"\nmode = "m"\n[[jobs]]\nmodel = "gbt"\nseed = 1\nname = "gbt-m"\n'
    assert [j.name for j in parse(body).jobs] == ["gbt-m-2", "gbt-m"]


def test_two_equal_explicit_names_are_a_problem() -> None:
    found = problems('[[jobs]]\nmodel = "gbt"\nname = "x"\n[[jobs]]\nmodel = "mlp"\nname = "x"\n')
    assert found == {"jobs[1].name": "'x' is also the name of jobs[0]; job names must be unique"}


# ---- sweeps -----------------------------------------------------------------------------------


def test_sweep_expands_to_the_cartesian_product_with_readable_names_in_a_fixed_order() -> None:
    body = '[[sweeps]]\nmodel = "gbt"\nmode = "realistic"\nhyper = { n_estimators = [300, 100], learning_rate = [0.05, 0.1], max_depth = 4 }\n'
    jobs = parse(body).jobs
    assert [j.name for j in jobs] == [
        "gbt-realistic-learning_rate=0.05-n_estimators=300",
        "gbt-realistic-learning_rate=0.05-n_estimators=100",
        "gbt-realistic-learning_rate=0.1-n_estimators=300",
        "gbt-realistic-learning_rate=0.1-n_estimators=100",
    ]
    assert all(j.hyper["max_depth"] == 4 for j in jobs)
    assert len({j.id for j in jobs}) == 4


def test_sweep_over_seeds_with_a_base_name_names_jobs_after_it() -> None:
    body = '[[sweeps]]\nname = "lr"\nmodel = "gbt"\nseed = [0, 1, 2]\nhyper = { learning_rate = [0.1, 0.2] }\n'
    jobs = parse(body).jobs
    assert len(jobs) == 6
    assert jobs[0].name == "lr-learning_rate=0.1-seed=0"
    assert jobs[-1].name == "lr-learning_rate=0.2-seed=2"
    assert sorted(j.seed for j in jobs) == [0, 0, 1, 1, 2, 2]


def test_sweep_jobs_have_the_ids_of_the_same_jobs_written_by_hand() -> None:
    swept = parse('[[sweeps]]\nmodel = "gbt"\nseed = [1, 2]\nhyper = { max_depth = [3] }\n').jobs
    by_hand = parse(
        '[[jobs]]\nmodel = "gbt"\nseed = 1\nhyper = { max_depth = 3 }\n[[jobs]]\nmodel = "gbt"\nseed = 2\nhyper = { max_depth = 3 }\n'
    ).jobs
    assert [j.id for j in swept] == [j.id for j in by_hand]
    assert [j.name for j in swept] == ["gbt-default-seed=1", "gbt-default-seed=2"]


def test_sweep_without_lists_is_one_job_named_like_a_job() -> None:
    (job,) = parse('[[sweeps]]\nmodel = "gbt"\nhyper = { max_depth = 3 }\n').jobs
    assert job.name == "gbt-default"


def test_sweep_values_are_checked_one_by_one_at_their_index() -> None:
    found = problems(
        '[[jobs]]\nmodel = "gbt"\n[[sweeps]]\nmodel = "gbt"\nseed = [1, "x"]\nhyper = { max_depth = [3, 0, 5] }\n'
    )
    assert set(found) == {"sweeps[0].seed[1]", "sweeps[0].hyper.max_depth[1]"}


def test_empty_sweep_list_is_refused() -> None:
    assert (
        "expands to no jobs"
        in problems('[[sweeps]]\nmodel = "gbt"\nhyper = { max_depth = [] }\n')["sweeps[0].hyper.max_depth"]
    )


def test_sweep_that_repeats_a_job_is_a_problem_naming_the_combination() -> None:
    found = problems(
        '[[jobs]]\nmodel = "gbt"\nhyper = { max_depth = 4 }\n[[sweeps]]\nmodel = "gbt"\nhyper = { max_depth = [3, 4] }\n'
    )
    assert found["sweeps[0]"].startswith("sweeps[0] (max_depth=4) is the same job as jobs[0]")


def test_sweep_over_the_size_limit_is_refused() -> None:
    values = ", ".join(str(i) for i in range(1, 200))
    body = f'[[sweeps]]\nmodel = "gbt"\nhyper = {{ n_estimators = [{values}], max_depth = [{", ".join(str(i) for i in range(1, 60))}] }}\n'
    assert f"over the limit of {MAX_SWEEP_JOBS}" in problems(body)["sweeps[0]"]


# ---- after ------------------------------------------------------------------------------------


def test_after_resolves_names_full_ids_and_id_prefixes_to_ids() -> None:
    base = parse('[[jobs]]\nmodel = "gbt"\nname = "first"\n').jobs[0].id
    body = (
        '[[jobs]]\nmodel = "gbt"\nname = "first"\n[[jobs]]\nmodel = "mlp"\nname = "second"\n'
        f'[[jobs]]\nmodel = "gbt"\nseed = 1\nafter = ["second", "{base}"]\n'
        f'[[jobs]]\nmodel = "gbt"\nseed = 2\nafter = ["{base[:8]}", "first"]\n'
    )
    m = parse(body)
    second = m.job_by_name("second")
    assert second is not None
    assert m.jobs[2].after == (second.id, base)
    assert m.jobs[3].after == (base,)  # the same job twice is one dependency


def test_every_job_of_a_sweep_waits_for_its_after() -> None:
    m = parse('[[jobs]]\nmodel = "mlp"\nname = "prep"\n[[sweeps]]\nmodel = "gbt"\nseed = [1, 2]\nafter = ["prep"]\n')
    prep = m.resolve_job("prep")
    assert [j.after for j in m.jobs[1:]] == [(prep.id,), (prep.id,)]


def test_after_may_name_a_job_of_a_sweep() -> None:
    m = parse('[[sweeps]]\nmodel = "gbt"\nseed = [1, 2]\n[[jobs]]\nmodel = "mlp"\nafter = ["gbt-default-seed=2"]\n')
    waiting = m.resolve_job("mlp-default")
    assert waiting.after == (m.resolve_job("gbt-default-seed=2").id,)


def test_unknown_after_entry_is_refused_with_a_suggestion() -> None:
    found = problems('[[jobs]]\nmodel = "gbt"\nname = "prepare"\n[[jobs]]\nmodel = "mlp"\nafter = ["prepair"]\n')
    assert found["jobs[1].after[0]"].startswith(
        "no job named 'prepair' (nor with such an id) (did you mean 'prepare'?)"
    )


def test_cycle_in_after_is_refused_showing_the_cycle() -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(DATA / "cycle.toml")
    (problem,) = info.value.problems
    assert problem.place == "jobs[0].after"
    assert "a -> b -> c -> a" in problem.message


def test_a_job_waiting_for_itself_is_a_cycle() -> None:
    found = problems('[[jobs]]\nmodel = "gbt"\nname = "a"\nafter = ["a"]\n')
    assert "a -> a" in found["jobs[0].after"]


# ---- everything at once -----------------------------------------------------------------------


def test_every_problem_of_a_manifest_is_reported_at_once() -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(DATA / "many_problems.toml")
    places = {p.place for p in info.value.problems}
    assert places == {
        "colour",
        "fleet.max_attempts",
        "trainers.tree.hyper.lr",
        "trainers.own.command",
        "hosts[0].slots",
        "hosts[1].id",
        "jobs[0].hyper.n_estimators",
        "jobs[0].hyper.lr",
        "jobs[1].model",
        "jobs[2].min_torch",
        "jobs[2].same_commit",
        "jobs[2].after[0]",
        "sweeps[0].hyper.max_depth[1]",
    }
    assert "many_problems.toml" in str(info.value) and "13 problem(s)" in str(info.value)


def test_problems_in_a_broken_trainer_do_not_hide_the_problems_of_its_jobs() -> None:
    found = problems(
        '[[jobs]]\nmodel = "gbt"\nhyper = { max_depth = 0 }\npriorty = 1\n',
        trainers='[trainers.gbt]\nbuiltin = "xgboost"\n[trainers.gbt.hyper]\nn_estimators = { min = 0 }\n',
    )
    assert set(found) == {"trainers.gbt.hyper.n_estimators.min", "jobs[0].priorty"}


# ---- lookups ----------------------------------------------------------------------------------


def test_manifest_lookups_find_trainers_hosts_and_jobs() -> None:
    m = load_manifest(DATA / "valid.toml")
    assert trainer_argv(m.trainer("gbt")) == ("{python}", "-m", "mqfleet.trainers.xgboost")
    with pytest.raises(NotFoundError):
        m.trainer("nope")
    job = m.resolve_job("gbt-base")
    assert m.job_by_id(job.id) is job
    assert m.resolve_job(job.id[:10]) is job
    assert m.places[job.id] == "jobs[0]"
    with pytest.raises(NotFoundError):
        m.resolve_job("nope")


def test_resolving_a_prefix_shared_by_several_job_ids_is_ambiguous() -> None:
    # 17 jobs over 16 hex digits: at least two ids share their first character
    m = parse('[[sweeps]]\nmodel = "gbt"\nseed = [' + ", ".join(str(i) for i in range(17)) + "]\n")
    firsts = [j.id[0] for j in m.jobs]
    shared = next(c for c in firsts if firsts.count(c) > 1)
    with pytest.raises(AmbiguousError):
        m.resolve_job(shared)


def test_a_problem_shared_by_every_job_of_a_sweep_is_reported_once() -> None:
    found = problems('[[sweeps]]\nmodel = "gbt"\nseed = [1, 2, 3]\nafter = ["ghost"]\n')
    assert list(found) == ["sweeps[0].after[0]"]
    with pytest.raises(ManifestError) as info:
        parse('[[sweeps]]\nmodel = "gbt"\nseed = [1, 2, 3]\nafter = ["ghost"]\n')
    assert len(info.value.problems) == 1


# ---- limits, outputs and the retry rules (docs/RELIABILITY.md, "Jobs that misbehave") ----------------


def test_job_limits_default_to_none_and_take_the_fleet_defaults_unless_the_job_sets_its_own() -> None:
    assert [(j.timeout_s, j.stall_s) for j in parse('[[jobs]]\nmodel = "gbt"\n').jobs] == [(None, None)]
    m = parse('[fleet]\ntimeout_s = 60\nstall_s = 30\n[[jobs]]\nmodel = "gbt"\n[[jobs]]\nmodel = "gbt"\nseed = 1\ntimeout_s = 5\n')
    assert [(j.timeout_s, j.stall_s) for j in m.jobs] == [(60.0, 30.0), (5.0, 30.0)]
    assert m.jobs[1].to_dict()["timeout_s"] == 5.0 and m.jobs[1].to_dict()["stall_s"] == 30.0


def test_limits_do_not_change_a_job_id() -> None:
    plain = parse('[[jobs]]\nmodel = "gbt"\n').jobs[0]
    limited = parse('[[jobs]]\nmodel = "gbt"\ntimeout_s = 9\nstall_s = 3\n').jobs[0]
    assert plain.id == limited.id


@pytest.mark.parametrize("value", ["0", "-1", '"10"', "true", "nan"])
@pytest.mark.parametrize("key", ["timeout_s", "stall_s"])
def test_a_limit_that_is_not_a_positive_number_is_refused_in_a_job_and_in_fleet(key: str, value: str) -> None:
    found = problems(f'[fleet]\n{key} = {value}\n[[jobs]]\nmodel = "gbt"\n{key} = {value}\n')
    assert set(found) == {f"fleet.{key}", f"jobs[0].{key}"}, found
    assert all("leave it out for no" in message for message in found.values()), found


def test_fleet_retry_settings_are_checked() -> None:
    found = problems('[fleet]\nretry_backoff_s = -1\nquarantine_after = 0\ncancel_unsatisfiable = "yes"\nretry_backof_s = 3\n')
    assert found["fleet.retry_backoff_s"] == "must be at least 0, not -1.0 (seconds; 0 retries at once)"
    assert found["fleet.quarantine_after"] == (
        "must be at least 1, not 0 (failed attempts in a row; leave it out to never quarantine)")
    assert found["fleet.cancel_unsatisfiable"] == 'must be true or false, not "yes"'
    assert "did you mean 'retry_backoff_s'" in found["fleet.retry_backof_s"]
    fleet = parse("[fleet]\nretry_backoff_s = 10\nquarantine_after = 3\ncancel_unsatisfiable = true\n").fleet
    assert (fleet.retry_backoff_s, fleet.quarantine_after, fleet.cancel_unsatisfiable) == (10.0, 3, True)


def test_keep_history_defaults_to_true_is_read_from_fleet_and_must_be_a_boolean() -> None:
    assert FleetSettings().keep_history is True
    assert parse("[fleet]\nkeep_history = false\n").fleet.keep_history is False
    assert problems('[fleet]\nkeep_history = "no"\n')["fleet.keep_history"] == 'must be true or false, not "no"'


def test_retry_backoff_doubles_per_counted_attempt_and_is_capped() -> None:
    fleet = FleetSettings(retry_backoff_s=10)
    assert [fleet.backoff_s(n) for n in (0, 1, 2, 3)] == [0.0, 10.0, 20.0, 40.0]
    assert fleet.backoff_s(40) == 600.0
    assert FleetSettings().backoff_s(3) == 0.0
    assert FleetSettings(retry_backoff_s=900).backoff_s(5) == 900.0, "a first delay above the cap is kept"


def test_builtin_trainers_declare_their_outputs_and_a_manifest_adds_to_them() -> None:
    m = parse('[[jobs]]\nmodel = "gbt"\n')
    assert m.trainers["gbt"].outputs == ("model.xgb.json", "ckpt.json", "report.json", "report.md")
    assert m.trainers["mlp"].outputs[0] == "model.pt"
    extra = parse("", trainers='[trainers.gbt]\nbuiltin = "xgboost"\noutputs = ["extra/*.csv", "ckpt.json"]\n')
    assert extra.trainers["gbt"].outputs[-1] == "extra/*.csv" and extra.trainers["gbt"].outputs.count("ckpt.json") == 1
    command = parse("", trainers='[trainers.x]\ncommand = ["{python}", "x.py"]\noutputs = ["**/*.pt"]\n')
    assert command.trainers["x"].outputs == ("**/*.pt",)
    assert parse("", trainers='[trainers.x]\ncommand = ["x"]\n').trainers["x"].outputs == ()


@pytest.mark.parametrize(
    ("outputs", "place", "expected"),
    [
        ('""', "trainers.x.outputs", "must be a list of globs"),
        ('[""]', "trainers.x.outputs[0]", "an empty glob matches nothing"),
        ('["  "]', "trainers.x.outputs[0]", "an empty glob matches nothing"),
        ('["/tmp/model.pt"]', "trainers.x.outputs[0]", "is absolute"),
        ('["../model.pt"]', "trainers.x.outputs[0]", "leaves the output folder"),
        ("[3]", "trainers.x.outputs[0]", "must be a glob string"),
    ],
)
def test_bad_output_globs_are_refused_at_their_place(outputs: str, place: str, expected: str) -> None:
    found = problems("", trainers=f'[trainers.x]\ncommand = ["x"]\noutputs = {outputs}\n')
    assert expected in found[place], found


def test_checkpoint_settings_default_to_five_minutes_and_two_gib_and_a_job_may_override_the_interval() -> None:
    m = parse('[[jobs]]\nmodel = "gbt"\n\n[[jobs]]\nmodel = "gbt"\nseed = 2\ncheckpoint_interval_s = 30\n')
    assert (m.fleet.checkpoint_interval_s, m.fleet.checkpoint_max_mib) == (300.0, 2048.0)
    assert [j.checkpoint_interval_s for j in m.jobs] == [None, 30]
    # Only an override enters the spec, so the specs of other jobs stay as they were.
    assert "checkpoint_interval_s" not in m.jobs[0].to_dict()
    assert m.jobs[1].to_dict()["checkpoint_interval_s"] == 30
    fleet = parse('[fleet]\ncheckpoint_interval_s = 10\ncheckpoint_max_mib = 64\n').fleet
    assert (fleet.checkpoint_interval_s, fleet.checkpoint_max_mib) == (10, 64)


def test_bad_checkpoint_settings_and_resumable_are_refused_at_their_place() -> None:
    found = problems(
        '[fleet]\ncheckpoint_interval_s = 0\ncheckpoint_max_mib = "big"\n'
        '[[jobs]]\nmodel = "gbt"\ncheckpoint_interval_s = -1\n',
        trainers=TRAINERS + 'resumable = "no"\n',
    )
    assert set(found) >= {"fleet.checkpoint_interval_s", "fleet.checkpoint_max_mib", "jobs[0].checkpoint_interval_s",
                          "trainers.mlp.resumable"}
    assert "true or false" in found["trainers.mlp.resumable"]


def test_a_trainer_is_resumable_unless_it_says_otherwise() -> None:
    m = parse("", trainers=TRAINERS + "resumable = false\n")
    assert m.trainers["gbt"].resumable is True
    assert m.trainers["mlp"].resumable is False


def test_a_checked_value_reads_back_in_its_kind_and_a_read_as_another_kind_is_a_bug_not_a_default() -> None:
    ck = Checker()
    got = ck.fields({"slots": 2, "labels": ["a"], "id": 3}, {"slots": "int>=1", "labels": "strs", "id": "str"}, "hosts[0]")
    assert got.integer("slots", 1) == 2 and got.texts("labels", ()) == ("a",)
    assert got.text("id", "default") == "default"  # refused (reported), so the default
    assert [str(p) for p in ck.problems] == ["hosts[0].id: must be a string, not 3"]
    with pytest.raises(TypeError, match="slots"):
        got.text("slots", "")
