"""An unusable data directory at start (a file, read-only, full): the real CLI says so in one
sentence naming the path and the reason and exits with EXIT_DATA_DIR (no traceback, so a service
manager does not restart it in a loop); `citygate check` reports it at `data_dir`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tmpfs import fill, small_tmpfs

from gateway.cli import EXIT_DATA_DIR, main
from gateway.storage import check_data_dir

REPO = Path(__file__).resolve().parent.parent

# a simulated full disk where no tmpfs can be mounted: every os.write fails with ENOSPC
SIMULATED_FULL = textwrap.dedent("""
    import errno, os, sys
    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.write = full
    from gateway.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def site(tmp_path: Path, data_dir: Path) -> Path:
    config = tmp_path / "site.yaml"
    config.write_text(f"site: disk\ndata_dir: {data_dir}\nweb: {{enabled: false}}\n", encoding="utf-8")
    return config


def run_cli(config: Path, *, simulate_full: bool = False) -> subprocess.CompletedProcess:
    command = ["-c", SIMULATED_FULL] if simulate_full else ["-m", "gateway.cli"]
    return subprocess.run([sys.executable, *command, "run", str(config), "--for", "2"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def assert_refused(result: subprocess.CompletedProcess, path: Path, reason: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == EXIT_DATA_DIR, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, lines
    assert f"cannot start: data directory {path}" in lines[0] and reason in lines[0]


def test_a_data_dir_that_is_a_file(tmp_path):
    data = tmp_path / "var"
    data.write_text("not a folder\n")
    assert_refused(run_cli(site(tmp_path, data)), data, "is a file, not a folder")
    below = data / "cases"
    assert_refused(run_cli(site(tmp_path, below)), below, f"cannot be created: {data} is a file")


def test_a_read_only_data_dir(tmp_path):
    with small_tmpfs(tmp_path / "ro", "1m", read_only=True) as mount:
        if mount is None:  # no mount privilege: permission bits stop a non-root user the same way
            mount = tmp_path / "ro"
            mount.chmod(0o555)
            assert os.geteuid() != 0, "root needs a read-only mount for this test, and mount was refused"
        reason = "read-only" if os.path.ismount(mount) else "permission denied"
        assert_refused(run_cli(site(tmp_path, mount)), mount, reason)
        assert_refused(run_cli(site(tmp_path, mount / "sub")), mount / "sub", reason)


def test_a_full_data_dir(tmp_path):
    with small_tmpfs(tmp_path / "full", "256k") as mount:
        if mount is not None:
            fill(mount)
            result = run_cli(site(tmp_path, mount))
        else:
            mount = tmp_path / "full"
            result = run_cli(site(tmp_path, mount), simulate_full=True)
        assert_refused(result, mount, "no space left on the device")


def test_check_reports_a_data_dir_that_is_a_file_and_accepts_one_it_could_create(tmp_path, capsys):
    data = tmp_path / "var"
    data.write_text("")
    assert main(["check", str(site(tmp_path, data))]) == 2
    assert f"  data_dir: data directory {data} is a file, not a folder" in capsys.readouterr().err
    assert main(["check", str(site(tmp_path, tmp_path / "new" / "data"))]) == 0
    assert not (tmp_path / "new").exists()  # check looks, it does not create
    assert check_data_dir(tmp_path / "new" / "data", create=True) is None and (tmp_path / "new" / "data").is_dir()
    assert list((tmp_path / "new" / "data").iterdir()) == []  # the write probe is gone


def test_check_reports_a_read_only_data_dir(tmp_path, capsys):
    with small_tmpfs(tmp_path / "ro", "1m", read_only=True) as mount:
        if mount is None:
            mount = tmp_path / "ro"
            mount.chmod(0o555)
        assert main(["check", str(site(tmp_path, mount / "data"))]) == 2
        assert f"data_dir: data directory {mount / 'data'} cannot be created" in capsys.readouterr().err
