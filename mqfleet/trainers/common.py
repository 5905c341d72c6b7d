"""What both built-in trainers share: the job (spec, env, flags), progress lines, JSON files and exit codes;
what a trainer writes at its end is in `trainers/output.py`.

Hyperparameter flags are generated from `BUILTIN_HYPER`, the same declarations manifest validation uses, so the
names, types and defaults a trainer accepts can never drift from what a manifest may say.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from mqfleet.defaults import ENV_CHECKPOINT_DIR, ENV_OUT_DIR, ENV_SPEC, PROGRESS_PREFIX
from mqfleet.errors import TrainerInputError
from mqfleet.manifest.builtins import BUILTIN_HYPER, BUILTIN_MODULE
from mqfleet.manifest.types import HyperParam, HyperValue

if TYPE_CHECKING:
    from mqfleet.wire.topics import JsonObject, JsonValue

#: Spec keys that differ between attempts of one job; kept out of the artifact so retries dedupe.
VOLATILE_SPEC_KEYS = frozenset({"attempt", "lease_id"})
#: Exit status for invalid input (flags, spec, dataset), as the CLI uses 2 for bad usage; other failures exit 1.
EXIT_INPUT = 2


class TrainerStopped(BaseException):
    """Raised inside a trainer when the agent sends SIGTERM (cancel, drain); control flow, not an error."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _stop(signum: int, frame: object) -> None:
    raise TrainerStopped(signum)


@dataclass(frozen=True)
class TrainerJob:
    """The job a trainer process was started for: spec, resolved hyperparameters, where to read and write."""

    trainer: str
    #: The spec file as the agent wrote it (recorded in the artifact); the fields below are read from it, checked.
    spec: JsonObject
    hyper: dict[str, HyperValue]
    seed: int
    out_dir: Path
    dataset_path: Path
    cuda_devices: str
    job_id: str = ""
    name: str = ""
    #: The dataset as the spec names it (relative to the training repo): an absolute path would differ per host.
    dataset: str = ""
    mode: str = ""
    target: str = "target"
    group_column: str = ""
    split_recipe: str = "random"
    train_hosts: tuple[str, ...] = ()

    @property
    def wants_cuda(self) -> bool:
        return self.cuda_devices.strip() not in ("", "-1")

    def recorded_spec(self) -> JsonObject:
        """The spec as written into the artifact: without attempt and lease, which change on every retry."""
        return {k: v for k, v in self.spec.items() if k not in VOLATILE_SPEC_KEYS}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def coerce_hyper(param: HyperParam, raw: JsonValue) -> HyperValue:
    """Turn a flag string or a spec JSON value into the declared type, within the declared bounds.

    Raises:
        ValueError: with a message naming the problem, never the parameter (callers add it).
    """
    value: HyperValue
    if param.type == "int":
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError(f"expected an integer, got {raw!r}")
        if isinstance(raw, float) and not raw.is_integer():
            raise ValueError(f"expected an integer, got {raw!r}")
        value = int(raw) if not isinstance(raw, str) else int(raw.strip())
    elif param.type == "float":
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError(f"expected a number, got {raw!r}")
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {raw!r}")
    elif param.type == "bool":
        value = raw if isinstance(raw, bool) else _parse_bool(str(raw))
    elif param.type == "str":
        value = str(raw)
    else:
        raise ValueError(f"undeclarable type {param.type!r}")
    if isinstance(value, (int, float)):  # only int and float declarations have bounds
        if param.min is not None and value < param.min:
            raise ValueError(f"{value!r} is below the minimum {param.min!r}")
        if param.max is not None and value > param.max:
            raise ValueError(f"{value!r} is above the maximum {param.max!r}")
    if param.choices and value not in param.choices:
        raise ValueError(f"{value!r} is not one of {list(param.choices)!r}")
    return value


def hyper_int(hyper: Mapping[str, HyperValue], name: str) -> int:
    """A resolved int hyperparameter (`resolve_hyper` converted it to its declared type)."""
    value = hyper[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"hyperparameter {name} is {value!r}, not an integer")
    return value


def hyper_number(hyper: Mapping[str, HyperValue], name: str) -> float:
    """A resolved float hyperparameter (`resolve_hyper` converted it to its declared type)."""
    value = hyper[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"hyperparameter {name} is {value!r}, not a number")
    return value


def build_parser(trainer: str) -> argparse.ArgumentParser:
    """The `--name value` parser of a built-in trainer, one option per declared hyperparameter."""
    declared = BUILTIN_HYPER[trainer]
    parser = argparse.ArgumentParser(
        prog=f"python -m {BUILTIN_MODULE[trainer]}",
        description=f"mqfleet built-in trainer {trainer!r}; job spec in ${ENV_SPEC}, output folder in ${ENV_OUT_DIR}.",
        allow_abbrev=False,
        # Absent flags stay absent, so the spec's value (or the declared default) applies instead.
        argument_default=argparse.SUPPRESS,
    )
    for name, param in declared.items():

        def convert(text: str, _param: HyperParam = param) -> HyperValue:
            try:
                return coerce_hyper(_param, text)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from e

        convert.__name__ = param.type  # argparse names the type in its "invalid value" message
        parser.add_argument(f"--{name}", type=convert, metavar=param.type.upper(), help=f"default {param.default!r}")
    return parser


def resolve_hyper(trainer: str, argv: Sequence[str], spec_hyper: Mapping[str, JsonValue]) -> dict[str, HyperValue]:
    """Hyperparameters for this run: flags win over the spec's hyper, which wins over the declared defaults.

    An undeclared flag or a bad flag value exits 2 through argparse; an undeclared or bad spec value raises.
    """
    declared = BUILTIN_HYPER[trainer]
    parser = build_parser(trainer)
    flags, extra = parser.parse_known_args(list(argv))
    if extra:
        unknown = " ".join(extra)
        parser.error(f"unknown hyperparameter(s) {unknown}; trainer {trainer!r} declares {', '.join(sorted(declared))}")
    hyper: dict[str, HyperValue] = {}
    for name, param in declared.items():
        if name in vars(flags):
            hyper[name] = vars(flags)[name]  # already converted by the option's `convert`
        elif name in spec_hyper:
            try:
                hyper[name] = coerce_hyper(param, spec_hyper[name])
            except (TypeError, ValueError) as e:
                raise TrainerInputError(f"spec hyper.{name}: {e}") from e
        else:
            assert param.default is not None, f"built-in {trainer!r} declares no default for {name}"
            hyper[name] = param.default
    undeclared = sorted(set(spec_hyper) - set(declared))
    if undeclared:
        raise TrainerInputError(f"spec hyper {', '.join(undeclared)}: not a hyperparameter of trainer {trainer!r}")
    return hyper


def read_spec(environ: Mapping[str, str]) -> JsonObject:
    """The job spec named by `MQFLEET_SPEC`."""
    path_text = environ.get(ENV_SPEC, "")
    if not path_text:
        raise TrainerInputError(f"${ENV_SPEC} is not set; the agent starts trainers with the job spec's path in it")
    try:
        spec = json.loads(Path(path_text).read_text(encoding="utf-8"))
    except OSError as e:
        raise TrainerInputError(f"cannot read the job spec {path_text}: {e.strerror or e}") from e
    except ValueError as e:
        raise TrainerInputError(f"the job spec {path_text} is not JSON: {e}") from e
    if not isinstance(spec, dict):
        raise TrainerInputError(f"the job spec {path_text} is not a JSON object")
    return spec


def _spec_text(spec: JsonObject, key: str, default: str) -> str:
    """A string field of the spec; absent, null or empty reads as `default`."""
    value = spec.get(key)
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise TrainerInputError(f"spec {key} must be a string, got {value!r}")
    return value


def _spec_texts(spec: JsonObject, key: str) -> tuple[str, ...]:
    """A list-of-strings field of the spec; absent or null reads as empty."""
    value = spec.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TrainerInputError(f"spec {key} must be a list of strings, got {value!r}")
    return tuple(v for v in value if isinstance(v, str))


def load_job(trainer: str, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> TrainerJob:
    """Everything a built-in trainer is told by the agent: spec file, output folder, GPUs and flags."""
    env = os.environ if environ is None else environ
    spec = read_spec(env)
    spec_hyper = spec.get("hyper") or {}
    if not isinstance(spec_hyper, dict):
        raise TrainerInputError("spec hyper is not an object")
    hyper = resolve_hyper(trainer, argv, spec_hyper)
    out_text = env.get(ENV_OUT_DIR, "")
    if not out_text:
        raise TrainerInputError(f"${ENV_OUT_DIR} is not set; the agent names the output folder in it")
    dataset = spec.get("dataset") or ""
    if not isinstance(dataset, str) or not dataset:
        raise TrainerInputError("spec dataset is empty; name a CSV or NPZ file (relative to the training repo)")
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TrainerInputError(f"spec seed must be an integer, got {seed!r}")
    out_dir = Path(out_text)
    out_dir.mkdir(parents=True, exist_ok=True)
    return TrainerJob(
        trainer=trainer,
        spec=spec,
        hyper=hyper,
        seed=seed,
        out_dir=out_dir,
        dataset_path=Path(dataset),  # relative paths resolve against the cwd, the training repo root
        cuda_devices=env.get("CUDA_VISIBLE_DEVICES", ""),
        job_id=_spec_text(spec, "id", ""),
        name=_spec_text(spec, "name", ""),
        dataset=dataset,
        mode=_spec_text(spec, "mode", ""),
        target=_spec_text(spec, "target", "target"),
        group_column=_spec_text(spec, "group_column", ""),
        split_recipe=_spec_text(spec, "split_recipe", "random"),
        train_hosts=_spec_texts(spec, "train_hosts"),
    )


def finite(obj: JsonValue) -> JsonValue:
    """The object with NaN and infinities as None: a diverged loss must not make the JSON unreadable."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def emit_progress(fields: Mapping[str, JsonValue]) -> None:
    """Print one `@mqfleet {json}` line and flush it, so the agent sees progress as it happens."""
    line = json.dumps(finite(dict(fields)), sort_keys=True, separators=(",", ":"), allow_nan=False)
    sys.stdout.write(f"{PROGRESS_PREFIX} {line}\n")
    sys.stdout.flush()


def progress_every(total: int, most_lines: int = 200) -> int:
    """Report every Nth round so a 100,000-round job does not flood the broker with progress lines."""
    return max(1, -(-total // most_lines))


def log(message: str) -> None:
    """An ordinary log line on stdout (the agent keeps the tail of stdout and stderr)."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def write_json(path: Path, obj: JsonValue) -> None:
    """Write JSON the same way every time: sorted keys, fixed indent, trailing newline."""
    path.write_text(json.dumps(finite(obj), sort_keys=True, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def checkpoint_folder(environ: Mapping[str, str] | None = None) -> Path | None:
    """The job's checkpoint folder ($MQFLEET_CHECKPOINT_DIR), or None when the agent gave none (or no agent)."""
    value = (os.environ if environ is None else environ).get(ENV_CHECKPOINT_DIR, "")
    return Path(value) if value else None


def replace_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename: a reader (the agent's sync, the next
    attempt) sees the old file or the new one, never half of one, even if the trainer is killed mid-write."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def run_trainer(train: Callable[[Sequence[str]], None], argv: Sequence[str] | None = None) -> NoReturn:
    """Run a trainer's body and exit: 0 on success, 2 with a one-line message for bad input, 128+N when stopped
    by signal N (SIGTERM from the agent), 1 with a traceback for any other failure."""
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _stop)
    try:
        train(sys.argv[1:] if argv is None else argv)
    except TrainerInputError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(EXIT_INPUT)
    except (TrainerStopped, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, TrainerStopped) else signal.SIGINT
        sys.stderr.write(f"stopped by {signal.Signals(signum).name} after {time.monotonic() - started:.1f}s\n")
        sys.exit(128 + signum)
    # Wall-clock time goes to the log only: in the artifact it would make identical runs differ.
    log(f"done in {time.monotonic() - started:.1f}s")
    sys.exit(0)
