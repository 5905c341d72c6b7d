"""The `--db postgresql://` URL as mqfleet shows it: every form of password hidden, bad URLs refused early."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqfleet.coordinator.sql.pgurl import check_url, has_password, read_password_file, redact_url, scrub
from mqfleet.errors import ConfigurationError


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://bob:hunter2@db.lan:5432/fleet", "postgresql://bob:***@db.lan:5432/fleet"),
        ("postgresql://bob@db.lan/fleet", "postgresql://bob@db.lan/fleet"),
        ("postgresql://bob:p%40ss@DB.lan/fleet?sslmode=verify-full",
         "postgresql://bob:***@DB.lan/fleet?sslmode=verify-full"),
        ("postgresql://bob:p@ss@db.lan/fleet", "postgresql://bob:***@db.lan/fleet"),
        ("postgresql://bob@db.lan/fleet?password=hunter2&sslmode=require",
         "postgresql://bob@db.lan/fleet?password=***&sslmode=require"),
        ("postgres://db.lan/fleet?user=bob&PassWord=hunter2&sslpassword=key-pass",
         "postgres://db.lan/fleet?user=bob&PassWord=***&sslpassword=***"),
        ("postgresql://bob@db.lan/fleet?pass%77ord=hunter2", "postgresql://bob@db.lan/fleet?pass%77ord=***"),
        ("postgresql://bob:hunter2@db.lan:notaport/fleet", "postgresql://(URL hidden: it does not parse)"),
        ("postgresql://bob:hun/ter2@db.lan/fleet", "postgresql://(URL hidden: it does not parse)"),
        ("postgresql://bob:123/ter2@db.lan/fleet", "postgresql://(URL hidden: it does not parse)"),
        ("postgresql://bob:hunter2@[::1/fleet", "postgresql://(URL hidden: it does not parse)"),
        ("postgresql://bob:hun#ter2@db.lan/fleet", "postgresql://(URL hidden: it does not parse)"),
    ],
)
def test_redact_url_hides_the_password_in_every_form_and_never_raises(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "hunter2" not in redact_url(url) and "ter2" not in redact_url(url)


@pytest.mark.parametrize("url", ["postgresql://bob:se%zzcret@h/db", "postgresql://bob:secret%4@h/db",
                                 "postgresql://bob@h/db?password=se%g1cret", "postgresql://bob:sec/ret@h:5/db"])
def test_check_url_refuses_what_libpq_would_quote_back_and_never_shows_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        check_url(url)
    assert "cret" not in str(refused.value) and "--db-password-file" in str(refused.value)


def test_check_url_takes_well_formed_urls() -> None:
    check_url("postgresql://bob:p%25ss%40word@db.lan:5432/fleet?sslmode=verify-full")


def test_scrub_hides_the_password_raw_decoded_and_from_a_file() -> None:
    url = "postgresql://bob:p%40ss@h/db?password=other"
    text = 'invalid token "p%40ss", "p@ss", "other" and file-secret in postgresql://bob:p%40ss@h/db?password=other'
    cleaned = scrub(text, url, password="file-secret")
    assert "p%40ss" not in cleaned and "p@ss" not in cleaned and "other" not in cleaned
    assert "file-secret" not in cleaned and cleaned.count("***") >= 4


def test_a_password_in_the_url_in_either_form_wins_over_a_file() -> None:
    assert has_password("postgresql://bob:x@h/db") and has_password("postgresql://bob@h/db?PASSWORD=x")
    assert not has_password("postgresql://bob@h/db?sslmode=require")


def test_the_password_file_gives_its_first_line_and_refuses_what_is_not_one(tmp_path: Path) -> None:
    good = tmp_path / "pw"
    good.write_text("s3cret with spaces\nignored\n")
    assert read_password_file(good) == "s3cret with spaces"
    for name, content in (("empty", b""), ("blank", b"\n\n"), ("binary", b"\xff\xfe"), ("huge", b"x" * 5000)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConfigurationError, match=f"--db-password-file.*{name}"):
            read_password_file(tmp_path / name)
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_password_file(tmp_path / "missing")
