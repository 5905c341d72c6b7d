"""The `postgres` extra installs wherever psycopg runs: the binary wheel only where psycopg-binary has wheels,
plain psycopg over the system's libpq elsewhere (docs/OPERATIONS.md, "Install lines by platform")."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from mqfleet.coordinator.sql.pgconnection import psycopg_missing

ROOT = Path(__file__).resolve().parents[2]

#: platform_machine as Python reports it, where psycopg-binary publishes wheels (manylinux, musllinux, macOS, Windows).
WITH_WHEELS = ("x86_64", "AMD64", "aarch64", "arm64", "ppc64le")
#: 32-bit ARM (Raspberry Pi OS armhf on a 32-bit kernel), 32-bit x86, and others without a psycopg-binary wheel.
WITHOUT_WHEELS = ("armv7l", "armv6l", "armv8l", "i686", "s390x", "riscv64")


def installed_by_postgres_extra(machine: str) -> set[str]:
    """What `pip install 'mqfleet[postgres]'` asks for on a machine: each requirement whose marker holds there."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    out = set()
    for line in extras["postgres"]:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"platform_machine": machine, "extra": "postgres"}):
            out.add(req.name + "".join(f"[{e}]" for e in sorted(req.extras)))
    return out


@pytest.mark.parametrize("machine", WITH_WHEELS)
def test_the_postgres_extra_takes_the_binary_wheel_where_psycopg_binary_has_one(machine: str) -> None:
    assert installed_by_postgres_extra(machine) == {"psycopg", "psycopg[binary]"}


@pytest.mark.parametrize("machine", WITHOUT_WHEELS)
def test_the_postgres_extra_takes_plain_psycopg_over_the_system_libpq_where_there_is_no_binary_wheel(machine: str) -> None:
    assert installed_by_postgres_extra(machine) == {"psycopg"}


def test_a_psycopg_without_libpq_is_told_to_install_the_system_libpq_not_the_extra_again() -> None:
    # psycopg's own words (psycopg/pq/__init__.py, pq/_pq_ctypes.py) when neither its binary wheel nor a libpq is there
    no_libpq = ImportError("no pq wrapper available.\nAttempts made:\n"
                           "- couldn't import psycopg 'c' implementation: No module named 'psycopg_c'\n"
                           "- couldn't import psycopg 'binary' implementation: No module named 'psycopg_binary'\n"
                           "- couldn't import psycopg 'python' implementation: libpq library not found")
    assert "apt-get install libpq5" in psycopg_missing(no_libpq)
    assert "pip install" not in psycopg_missing(no_libpq)

    absent = ModuleNotFoundError("No module named 'psycopg'")
    assert "pip install 'mqfleet[postgres]'" in psycopg_missing(absent)
