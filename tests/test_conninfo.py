"""PostgreSQL passwords never reach a message: URLs redacted, libpq's text scrubbed."""

from __future__ import annotations

import socket

import pytest

from ceranubis_jupyter.errors import StoreError
from ceranubis_jupyter.projects.conninfo import passwords_in, redact, scrub
from ceranubis_jupyter.projects.stores import open_store


@pytest.mark.parametrize(
    ("url", "expected", "secret"),
    [
        ("postgresql://u:s3cret@db.example/p", "postgresql://u:***@db.example/p", "s3cret"),
        ("postgresql://u:pa/ss@db/p", "postgresql://u:***@db/p", "pa/ss"),
        ("postgresql://:s3cret@db/p", "postgresql://:***@db/p", "s3cret"),
        ("postgresql://u:p@ss@w0rd@db/p", "postgresql://u:***@db/p", "p@ss@w0rd"),
        ("pg://u@db/p?password=s3cret&x=1", "pg://u@db/p?password=***&x=1", "s3cret"),
        ("pg://u@db/p?ssl=1&PASSWORD=s3cret", "pg://u@db/p?ssl=1&PASSWORD=***", "s3cret"),
        ("host=db user=u password=s3cret db=p", "host=db user=u password=*** db=p", "s3cret"),
        ("host=db password='s3 cret' dbname=p", "host=db password=*** dbname=p", "s3 cret"),
    ],
)  # fmt: skip
def test_redact_hides_every_form_of_password(url: str, expected: str, secret: str) -> None:
    assert redact(url) == expected
    assert secret in passwords_in(url)
    assert secret not in redact(url)


def test_a_url_without_password_is_unchanged() -> None:
    url = "postgresql://u@db.example:5433/p?sslmode=require"
    assert redact(url) == url and passwords_in(url) == []


def test_percent_encoded_passwords_are_scrubbed_decoded_too() -> None:
    url = "postgresql://u:p%40ssw0rd@db/p"
    assert scrub("server said p@ssw0rd and p%40ssw0rd", url) == "server said *** and ***"


def test_scrub_removes_what_a_parser_split_off_a_password() -> None:
    url = "postgresql://alice:hunter@two@127.0.0.1/db"
    echoed = 'could not translate host name "two@127.0.0.1" to address'
    assert scrub(echoed, url) == 'could not translate host name "***@127.0.0.1" to address'
    assert "hunter" not in scrub("password authentication failed: hunter", url)


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "template",
    [
        "postgresql://:t0p-secret@127.0.0.1:{port}/db",
        "postgresql://alice@127.0.0.1:{port}/db?password=t0p-secret",
        "postgresql://alice:t0p%2Fsecret@127.0.0.1:{port}/db",
    ],
)
def test_store_errors_from_libpq_carry_no_password(template: str) -> None:
    url = template.format(port=_refused_port())
    with pytest.raises(StoreError, match="cannot reach the project store") as caught:
        open_store(url)
    message = str(caught.value)
    assert "t0p" not in message and "secret" not in message, message
    assert "~/.pgpass" in message and "PGPASSWORD" in message
