"""Datasets, splits, task choice, the demo data and hyperparameter flags of the built-in trainers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqfleet.errors import TrainerInputError
from mqfleet.manifest.builtins import BUILTIN_HYPER
from mqfleet.trainers.common import build_parser, coerce_hyper, emit_progress, load_job, resolve_hyper, write_json
from mqfleet.trainers.dataset import Dataset, decide_task, load_dataset, score, split_dataset
from mqfleet.trainers.demo_data import COLUMNS, HOSTS, make_dataset, make_npz
from mqfleet.trainers.demo_data import main as demo_main

CSV_TEXT = "host,temp,load,failure\na,50.5,1,0\nb,71.0,,1\na,48.25,2,0\nc,80,3,1\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def grouped(rows: int, groups: int) -> Dataset:
    names = np.array([f"h{i % groups}" for i in range(rows)])
    return Dataset(("f",), np.arange(rows, dtype=float)[:, None], np.zeros(rows), names, "y", "host", "0" * 64)


def test_csv_reads_numeric_features_string_host_as_groups_and_empty_cells_as_nan(tmp_path: Path) -> None:
    data = load_dataset(write(tmp_path / "d.csv", CSV_TEXT), target="failure")
    assert data.features == ("temp", "load")
    assert data.group_column == "host"
    assert data.groups is not None and data.groups.tolist() == ["a", "b", "a", "c"]
    assert data.y.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert data.x[0].tolist() == [50.5, 1.0]
    assert np.isnan(data.x[1, 1])


def test_csv_without_the_target_column_is_refused_naming_the_column(tmp_path: Path) -> None:
    with pytest.raises(TrainerInputError, match="'broken'"):
        load_dataset(write(tmp_path / "d.csv", CSV_TEXT), target="broken")


def test_non_numeric_feature_column_is_refused_naming_it(tmp_path: Path) -> None:
    text = "site,temp,y\nx,1,0\ny,2,1\n"
    with pytest.raises(TrainerInputError, match="'site' is not numeric"):
        load_dataset(write(tmp_path / "d.csv", text), target="y")
    data = load_dataset(tmp_path / "d.csv", target="y", group_column="site")
    assert data.features == ("temp",)


def test_missing_dataset_and_unknown_format_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainerInputError, match="not found"):
        load_dataset(tmp_path / "absent.csv", target="y")
    with pytest.raises(TrainerInputError, match="unknown format"):
        load_dataset(write(tmp_path / "d.parquet", "x"), target="y")


def test_ragged_csv_row_is_refused_with_its_line_number(tmp_path: Path) -> None:
    with pytest.raises(TrainerInputError, match="line 3"):
        load_dataset(write(tmp_path / "d.csv", "a,y\n1,0\n2,1,5\n"), target="y")


def test_npz_with_arrays_named_by_column_reads_like_the_csv(tmp_path: Path) -> None:
    csv = load_dataset(make_dataset(tmp_path / "d.csv", rows=50, seed=3), target="failure")
    npz = load_dataset(make_npz(tmp_path / "d.npz", rows=50, seed=3), target="failure")
    assert npz.features == csv.features
    np.testing.assert_array_equal(npz.x, csv.x)
    np.testing.assert_array_equal(npz.y, csv.y)
    assert npz.groups is not None and csv.groups is not None
    assert npz.groups.tolist() == csv.groups.tolist()


def test_npz_with_x_y_and_groups_uses_them_whatever_the_target_is_called(tmp_path: Path) -> None:
    path = tmp_path / "xy.npz"
    np.savez(path, X=np.arange(12.0).reshape(4, 3), y=np.array([0, 1, 0, 1]), groups=np.array(["p", "q", "p", "r"]))
    data = load_dataset(path, target="label")
    assert data.features == ("x0", "x1", "x2")
    assert data.x.shape == (4, 3)
    assert data.y.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert data.group_column == "groups"
    assert data.groups is not None and data.groups.tolist() == ["p", "q", "p", "r"]


def test_npz_x_y_layout_is_read_when_the_target_is_called_y(tmp_path: Path) -> None:
    path = tmp_path / "xy.npz"
    np.savez(path, X=np.ones((3, 2)), y=np.array([1.5, 2.5, 3.5]))
    data = load_dataset(path, target="y")
    assert data.features == ("x0", "x1") and data.y.tolist() == [1.5, 2.5, 3.5] and data.groups is None


def test_random_split_is_seeded_disjoint_and_holds_out_a_fifth() -> None:
    data = grouped(100, 4)
    first = split_dataset(data, recipe="random", seed=1)
    again = split_dataset(data, recipe="random", seed=1)
    other = split_dataset(data, recipe="random", seed=2)
    assert len(first.test) == 20 and len(first.train) == 80
    assert np.array_equal(first.test, again.test)
    assert not np.array_equal(first.test, other.test)
    assert sorted([*first.train.tolist(), *first.test.tolist()]) == list(range(100))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(2, 300), seed=st.integers(0, 2**40))
def test_random_split_always_partitions_the_rows_with_both_parts_non_empty(rows: int, seed: int) -> None:
    split = split_dataset(grouped(rows, 3), recipe="random", seed=seed)
    assert len(split.train) > 0 and len(split.test) > 0
    assert np.union1d(split.train, split.test).tolist() == list(range(rows))
    assert np.intersect1d(split.train, split.test).size == 0


def test_group_split_holds_out_whole_groups_chosen_by_the_seed() -> None:
    data = grouped(200, 10)
    split = split_dataset(data, recipe="host", seed=4)
    assert data.groups is not None
    assert len(split.test_groups) == 2 and len(split.train_groups) == 8
    assert set(data.groups[split.test].tolist()) == set(split.test_groups)
    assert set(data.groups[split.train].tolist()).isdisjoint(split.test_groups)
    assert split_dataset(data, recipe="group", seed=4).test_groups == split.test_groups
    seeds_pick = {split_dataset(data, recipe="group", seed=s).test_groups for s in range(10)}
    assert len(seeds_pick) > 1


def test_train_hosts_train_on_those_groups_and_evaluate_on_the_rest() -> None:
    data = grouped(30, 3)
    split = split_dataset(data, recipe="host", seed=0, train_hosts=["h0", "h2"])
    assert split.train_groups == ("h0", "h2") and split.test_groups == ("h1",)
    assert data.groups is not None and set(data.groups[split.test].tolist()) == {"h1"}
    assert len(split.train) == 20


def test_train_hosts_naming_an_absent_group_or_every_group_are_refused() -> None:
    data = grouped(30, 3)
    with pytest.raises(TrainerInputError, match="h9"):
        split_dataset(data, recipe="host", seed=0, train_hosts=["h0", "h9"])
    with pytest.raises(TrainerInputError, match="none is left"):
        split_dataset(data, recipe="host", seed=0, train_hosts=["h0", "h1", "h2"])


def test_group_split_without_a_group_column_or_unknown_recipe_is_refused(tmp_path: Path) -> None:
    data = load_dataset(write(tmp_path / "d.csv", "a,y\n1,0\n2,1\n3,0\n"), target="y")
    with pytest.raises(TrainerInputError, match="group column"):
        split_dataset(data, recipe="group", seed=0)
    with pytest.raises(TrainerInputError, match="unknown split_recipe"):
        split_dataset(data, recipe="stratified", seed=0)


def test_few_integer_target_values_are_classification_and_many_are_regression() -> None:
    assert decide_task(np.array([0.0, 1.0, 1.0]), "realistic").kind == "binary"
    multi = decide_task(np.array([3.0, 1.0, 2.0, 1.0]), "")
    assert multi.kind == "multiclass" and multi.classes == (1.0, 2.0, 3.0)
    assert multi.encode(np.array([3.0, 1.0])).tolist() == [2, 0]
    assert decide_task(np.arange(21.0), "").kind == "regression"
    assert decide_task(np.array([0.5, 1.0]), "").kind == "regression"


def test_mode_regression_or_classification_overrides_the_guess() -> None:
    assert decide_task(np.array([0.0, 1.0, 2.0]), "regression").kind == "regression"
    assert decide_task(np.arange(40.0), "classification").kind == "multiclass"
    with pytest.raises(TrainerInputError, match="single value"):
        decide_task(np.array([1.0, 1.0]), "")


def test_score_counts_accuracy_and_the_majority_baseline() -> None:
    task = decide_task(np.array([0.0, 1.0]), "")
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    metrics = score(task, np.array([0.0, 1.0, 1.0, 1.0]), proba)
    assert metrics["accuracy"] == 0.75
    assert metrics["baseline_accuracy"] == 0.75
    assert metrics["logloss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.7])))
    reg = score(decide_task(np.arange(30.0), ""), np.array([1.0, 3.0]), np.array([2.0, 3.0]))
    assert reg == {"rmse": pytest.approx(np.sqrt(0.5)), "mae": 0.5}


def test_demo_dataset_is_byte_identical_for_a_seed_and_differs_across_seeds(tmp_path: Path) -> None:
    first = make_dataset(tmp_path / "a.csv", rows=300, seed=11).read_bytes()
    again = make_dataset(tmp_path / "b.csv", rows=300, seed=11).read_bytes()
    other = make_dataset(tmp_path / "c.csv", rows=300, seed=12).read_bytes()
    assert first == again and first != other
    assert make_npz(tmp_path / "a.npz", rows=50).read_bytes() == make_npz(tmp_path / "b.npz", rows=50).read_bytes()


def test_demo_dataset_has_eight_hosts_a_binary_failure_target_and_the_declared_columns(tmp_path: Path) -> None:
    path = make_dataset(tmp_path / "demo.csv", rows=2000)
    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(COLUMNS)
    data = load_dataset(path, target="failure")
    assert data.groups is not None and sorted(set(data.groups.tolist())) == sorted(HOSTS)
    assert len(data.features) == 11 and not np.isnan(data.x).any()
    assert set(data.y.tolist()) == {0.0, 1.0}
    assert 0.15 < data.y.mean() < 0.5
    rates = [data.y[data.groups == h].mean() for h in HOSTS]
    assert max(rates) - min(rates) > 0.2  # hosts differ, so holding hosts out is a real test


def test_demo_data_cli_writes_csv_or_npz_by_suffix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_main([str(tmp_path / "d.csv"), "--rows", "40", "--seed", "2"]) == 0
    assert demo_main([str(tmp_path / "d.npz"), "--rows", "40", "--seed", "2"]) == 0
    assert (tmp_path / "d.csv").read_bytes() == make_dataset(tmp_path / "e.csv", rows=40, seed=2).read_bytes()
    assert load_dataset(tmp_path / "d.npz", target="failure").x.shape == (40, 11)
    assert "40 rows" in capsys.readouterr().out


@pytest.mark.parametrize("trainer", sorted(BUILTIN_HYPER))
def test_flags_are_generated_from_the_declarations_with_their_names_types_and_defaults(trainer: str) -> None:
    declared = BUILTIN_HYPER[trainer]
    options = {a.dest for a in build_parser(trainer)._actions if a.option_strings and a.dest != "help"}
    assert options == set(declared)
    assert resolve_hyper(trainer, [], {}) == {name: p.default for name, p in declared.items()}
    for name, param in declared.items():
        value = resolve_hyper(trainer, [f"--{name}", str(param.default)], {})[name]
        assert type(value).__name__ == param.type and value == param.default


def test_flags_win_over_spec_hyper_which_wins_over_defaults() -> None:
    hyper = resolve_hyper("xgboost", ["--n_estimators", "300"], {"n_estimators": 50, "learning_rate": 0.05})
    assert hyper["n_estimators"] == 300
    assert hyper["learning_rate"] == 0.05
    assert hyper["max_depth"] == BUILTIN_HYPER["xgboost"]["max_depth"].default


def test_undeclared_flag_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        resolve_hyper("torch-mlp", ["--epochs", "3", "--n_estimators", "9"], {})
    assert stop.value.code == 2
    assert "--n_estimators" in capsys.readouterr().err


def test_abbreviated_or_out_of_bounds_flags_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--n_est", "5"], ["--n_estimators", "0"], ["--learning_rate", "fast"]):
        with pytest.raises(SystemExit) as stop:
            resolve_hyper("xgboost", argv, {})
        assert stop.value.code == 2
    assert "below the minimum" in capsys.readouterr().err


def test_undeclared_or_mistyped_spec_hyper_is_refused() -> None:
    with pytest.raises(TrainerInputError, match="hidden"):
        resolve_hyper("xgboost", [], {"hidden": 5})
    with pytest.raises(TrainerInputError, match="max_depth"):
        resolve_hyper("xgboost", [], {"max_depth": 2.5})
    assert coerce_hyper(BUILTIN_HYPER["xgboost"]["max_depth"], 4.0) == 4


def test_load_job_reads_spec_out_dir_and_gpus_from_the_environment(tmp_path: Path) -> None:
    spec = {"id": "j", "hyper": {"epochs": 2}, "seed": 9, "dataset": "d.csv", "attempt": 2, "lease_id": "L"}
    write(tmp_path / "spec.json", json.dumps(spec))
    env = {"MQFLEET_SPEC": str(tmp_path / "spec.json"), "MQFLEET_OUT_DIR": str(tmp_path / "out"), "CUDA_VISIBLE_DEVICES": ""}
    job = load_job("torch-mlp", ["--lr", "0.01"], env)
    assert job.hyper["epochs"] == 2 and job.hyper["lr"] == 0.01 and job.seed == 9
    assert job.out_dir.is_dir() and not job.wants_cuda
    assert "attempt" not in job.recorded_spec() and "lease_id" not in job.recorded_spec()
    with pytest.raises(TrainerInputError, match="MQFLEET_SPEC"):
        load_job("torch-mlp", [], {"MQFLEET_OUT_DIR": str(tmp_path)})


def test_load_job_reads_the_specs_fields_typed_and_refuses_a_mistyped_one_naming_it(tmp_path: Path) -> None:
    spec = {"id": "j", "name": "n", "dataset": "d.csv", "target": "", "split_recipe": "group", "train_hosts": ["a"]}
    env = {"MQFLEET_SPEC": str(write(tmp_path / "spec.json", json.dumps(spec))), "MQFLEET_OUT_DIR": str(tmp_path / "out")}
    job = load_job("xgboost", [], env)
    assert (job.job_id, job.name, job.dataset, job.target, job.split_recipe, job.train_hosts) == (
        "j", "n", "d.csv", "target", "group", ("a",))  # an empty target reads as the default, as before
    for key, bad in (("target", 5), ("mode", ["x"]), ("train_hosts", "a"), ("train_hosts", [1])):
        write(tmp_path / "spec.json", json.dumps({**spec, key: bad}))
        with pytest.raises(TrainerInputError, match=f"spec {key} must be"):
            load_job("xgboost", [], env)


def test_a_spec_hyper_value_of_no_scalar_type_is_refused_naming_it() -> None:
    with pytest.raises(TrainerInputError, match="max_depth: expected an integer"):
        resolve_hyper("xgboost", [], {"max_depth": [3]})
    with pytest.raises(TrainerInputError, match="subsample: expected a number"):
        resolve_hyper("xgboost", [], {"subsample": {"v": 1}})


def test_non_finite_numbers_are_written_as_null_so_progress_and_ckpt_stay_valid_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emit_progress({"progress": 0.5, "loss": float("nan")})
    line = capsys.readouterr().out
    assert line.startswith("@mqfleet ") and json.loads(line.removeprefix("@mqfleet ")) == {"loss": None, "progress": 0.5}
    write_json(tmp_path / "m.json", {"curve": [1.0, float("inf")], "n": 3})
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == {"curve": [1.0, None], "n": 3}
