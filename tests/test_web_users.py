"""`citygate user add` and the users file, and `citygate check` refusing an open console."""

import getpass
import os
import stat
import textwrap

import pytest

from gateway.cli import main
from gateway.config import WebConfig
from gateway.web.auth import Accounts, UsersFileError, read_users_file


@pytest.fixture
def typed(monkeypatch):
    """What the user types at the two password prompts."""
    answers: list[str] = []
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": answers.pop(0))
    return answers


def site(tmp_path, web: str) -> str:
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: users
        data_dir: data
        web: {web}
        """), encoding="utf-8")
    return str(path)


def test_user_add_writes_and_updates_the_users_file(tmp_path, typed, capsys):
    config = site(tmp_path, "{host: 0.0.0.0, port: 8080, users_file: web-users}")
    typed += ["first-password", "first-password"]
    assert main(["user", "add", "li.wei", "--role", "operator", "--config", config]) == 0
    assert "added operator li.wei" in capsys.readouterr().out
    users_file = tmp_path / "web-users"
    assert stat.S_IMODE(os.stat(users_file).st_mode) == 0o600
    assert "first-password" not in users_file.read_text()
    typed += ["second-password", "second-password"]
    assert main(["user", "add", "li.wei", "--role", "admin", "--users-file", str(users_file)]) == 0
    assert "updated admin li.wei" in capsys.readouterr().out
    [user] = read_users_file(users_file)
    assert user.role == "admin" and user.password_hash.startswith("$argon2id$")
    accounts = Accounts(WebConfig(users_file="web-users"), users_file)
    assert accounts.check_password("li.wei", "second-password") is not None
    assert accounts.check_password("li.wei", "first-password") is None
    assert accounts.generated_password is None


def test_user_add_refuses_differing_or_short_passwords_and_bad_names(tmp_path, typed, capsys):
    users_file = tmp_path / "users"
    typed += ["password-one", "password-two"]
    assert main(["user", "add", "wang", "--role", "viewer", "--users-file", str(users_file)]) == 1
    assert "differ" in capsys.readouterr().err and not users_file.exists()
    typed += ["short", "short"]
    assert main(["user", "add", "wang", "--role", "viewer", "--users-file", str(users_file)]) == 1
    assert "at least 8" in capsys.readouterr().err
    assert main(["user", "add", "wang:admin", "--role", "viewer", "--users-file", str(users_file)]) == 2
    assert "user name" in capsys.readouterr().err


def test_user_add_without_a_users_file_prints_the_hash_line(typed, capsys):
    typed += ["a-long-password", "a-long-password"]
    assert main(["user", "add", "zhao", "--role", "viewer"]) == 0
    out = capsys.readouterr().out
    assert "- {name: zhao, role: viewer, password_hash: '$argon2id$" in out and "a-long-password" not in out


def test_a_damaged_users_file_names_the_line(tmp_path):
    path = tmp_path / "users"
    path.write_text("# users\nok:viewer:$argon2id$v=19$m=65536,t=3,p=4$abc$def\nbroken line\n")
    with pytest.raises(UsersFileError, match=r"users:3: expected 'name:role:argon2-hash'"):
        read_users_file(path)


def test_check_refuses_a_console_beyond_loopback_without_credentials(tmp_path, capsys):
    assert main(["check", site(tmp_path, "{host: 0.0.0.0, port: 8080}")]) == 2
    err = capsys.readouterr().err
    assert "web: the console would listen on 0.0.0.0, beyond this machine, with no user or token" in err
    assert main(["check", site(tmp_path, "{host: 127.0.0.1, port: 8080}")]) == 0
    token = "{host: 0.0.0.0, tokens: [{name: noc, role: viewer, token: abcdefghijklmnopqrstuvwxyz}]}"
    assert main(["check", site(tmp_path, token)]) == 0
    assert main(["check", site(tmp_path, "{host: 0.0.0.0, tokens: [{name: noc, token: short}]}")]) == 2
    assert "web.tokens[0].token" in capsys.readouterr().err
