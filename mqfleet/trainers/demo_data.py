"""The demo dataset: seeded, synthetic host telemetry with a `failure` target, as CSV or NPZ.

Rows come from 8 hosts (column `host`) that differ in cooling, power supply, age and workload, so a model
trained on some hosts and tested on others (split_recipe `host`) sees a real shift. Failure depends
non-linearly on heat, voltage sag, memory errors and their interactions, plus noise, so it can be learned
well but not perfectly. The same rows and seed give the same bytes.

Run `python -m mqfleet.trainers.demo_data OUT.csv [--rows N] [--seed S]` (an `.npz` name writes NPZ).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Hosts and their traits: ambient offset (°C), cooling quality (1 = good), PSU sag (V), age (years), typical load.
HOSTS: dict[str, tuple[float, float, float, float, float]] = {
    "atlas": (0.0, 1.00, 0.00, 1.0, 2.0),
    "boreal": (-3.0, 1.10, 0.02, 0.5, 1.5),
    "cirrus": (2.5, 0.85, 0.05, 3.0, 3.0),
    "delta": (1.0, 0.95, 0.12, 4.5, 2.5),
    "ember": (4.0, 0.75, 0.03, 2.0, 3.5),
    "fjord": (-1.5, 1.05, 0.08, 5.5, 1.0),
    "gale": (0.5, 0.90, 0.15, 2.5, 4.0),
    "halo": (3.0, 0.80, 0.01, 1.5, 2.8),
}
#: Columns in file order; `host` is the group column and `failure` (0/1) the target.
COLUMNS = (
    "host",
    "ambient_c",
    "load_avg",
    "cpu_temp_c",
    "fan_rpm",
    "mem_used_pct",
    "disk_io_mbps",
    "net_err_rate",
    "psu_volts",
    "uptime_days",
    "power_w",
    "ecc_errors",
    "failure",
)


def generate_table(*, rows: int = 4000, seed: int = 7) -> dict[str, np.ndarray]:
    """The demo table as columns (in `COLUMNS` order), drawn from one seeded generator."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    rng = np.random.default_rng(seed)
    names = list(HOSTS)
    host_idx = rng.integers(0, len(names), size=rows)
    traits = np.array([HOSTS[n] for n in names])[host_idx]
    ambient_shift, cooling, sag, age, typical_load = traits.T

    ambient = 22.0 + ambient_shift + rng.normal(0.0, 2.0, rows)
    load = rng.gamma(shape=4.0, scale=typical_load / 4.0)
    # A poorly cooled host runs hotter for the same load, and its fans spin harder trying to keep up.
    cpu_temp = ambient + 18.0 + 9.0 * load / cooling + rng.normal(0.0, 3.0, rows)
    fan = 1200.0 + 260.0 * load / cooling + rng.normal(0.0, 120.0, rows)
    mem = np.clip(rng.beta(2.0 + load, 3.0, rows) * 100.0, 1.0, 100.0)
    disk = rng.lognormal(mean=np.log(20.0 + 15.0 * load), sigma=0.5)
    net_err = rng.lognormal(mean=-6.0 + 0.3 * age, sigma=0.8)
    volts = 12.0 - sag * (0.5 + load / 4.0) + rng.normal(0.0, 0.05, rows)
    uptime = rng.uniform(0.0, 60.0 + 40.0 * age, rows)
    power = 70.0 + 28.0 * load + 0.8 * (cpu_temp - 50.0) + rng.normal(0.0, 8.0, rows)
    ecc = rng.poisson(0.05 * age * (1.0 + np.maximum(cpu_temp - 70.0, 0.0) / 10.0))

    heat = np.maximum(cpu_temp - 72.0, 0.0) / 6.0
    logit = (
        -2.6
        + heat**2
        + 9.0 * np.maximum(11.85 - volts, 0.0)
        + 0.9 * np.minimum(ecc, 4)
        + 1.2 * ((mem > 80.0) & (disk > 90.0))
        + 0.006 * uptime
        + 1.5 * ((fan < 1800.0) & (cpu_temp > 75.0))
        + rng.normal(0.0, 0.6, rows)
    )
    failure = (rng.uniform(0.0, 1.0, rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)

    return {
        "host": np.array(names, dtype=str)[host_idx],
        "ambient_c": ambient.round(2),
        "load_avg": load.round(3),
        "cpu_temp_c": cpu_temp.round(2),
        "fan_rpm": fan.round(0),
        "mem_used_pct": mem.round(2),
        "disk_io_mbps": disk.round(2),
        "net_err_rate": net_err.round(6),
        "psu_volts": volts.round(3),
        "uptime_days": uptime.round(2),
        "power_w": power.round(1),
        "ecc_errors": ecc,
        "failure": failure,
    }


def make_dataset(path: Path, *, rows: int = 4000, seed: int = 7) -> Path:
    """Write the demo table as CSV (header row, `\\n` line ends) and return its path."""
    table = generate_table(rows=rows, seed=seed)
    lines = [",".join(COLUMNS)]
    # str() of a rounded Python float is the shortest text that reads back to it: short and stable.
    columns = [table[c].tolist() for c in COLUMNS]
    lines += [",".join(str(v) for v in row) for row in zip(*columns, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    return path


def make_npz(path: Path, *, rows: int = 4000, seed: int = 7) -> Path:
    """Write the demo table as NPZ, one array per column (`host` as a string array), and return its path."""
    table = generate_table(rows=rows, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    # np.savez stamps no times into its zip members, so the bytes depend only on the arrays.
    with path.open("wb") as f:
        np.savez(f, **table)  # type: ignore[arg-type]  # numpy's stub types every keyword like allow_pickle
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mqfleet.trainers.demo_data", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="file to write; .npz writes NPZ, anything else CSV")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    writer = make_npz if args.out.suffix.lower() == ".npz" else make_dataset
    writer(args.out, rows=args.rows, seed=args.seed)
    sys.stdout.write(f"wrote {args.rows} rows to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
