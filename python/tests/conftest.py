"""Shared fixtures: a lock directory per test, the installed `onlyone`
command, Python scripts run as processes, and the PostgreSQL and MariaDB
servers of the test command (ONLYONE_TEST_POSTGRES_URL,
ONLYONE_TEST_MYSQL_URL)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

# The command the wheel installed next to this interpreter.
ONLYONE = os.path.join(os.path.dirname(sys.executable), "onlyone")


@pytest.fixture(autouse=True)
def _no_onlyone_environment(monkeypatch):
    # The tests say where each lock lives; the caller's defaults must not.
    for variable in ("ONLYONE_DIR", "ONLYONE_POSTGRES_URL", "ONLYONE_MYSQL_URL"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture(autouse=True)
def _ctrl_c_raises():
    # The tests of Ctrl-C send SIGINT to this process and expect
    # KeyboardInterrupt. Python installs that handler only when SIGINT is
    # not ignored at its start, and a shell without job control starts its
    # background jobs (`scripts/test &`, some CI runners) with SIGINT
    # ignored: then the signal would be dropped, not raised.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        yield
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        yield


@pytest.fixture
def lock_dir(tmp_path):
    path = tmp_path / "locks"
    path.mkdir(mode=0o700)
    return str(path)


@pytest.fixture
def name():
    """A lock name no other test (or run) uses."""
    return f"py-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg_url():
    url = os.environ.get("ONLYONE_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("ONLYONE_TEST_POSTGRES_URL is not set (scripts/test sets it)")
    return url


@pytest.fixture
def my_url():
    url = os.environ.get("ONLYONE_TEST_MYSQL_URL")
    if not url:
        pytest.skip(
            "ONLYONE_TEST_MYSQL_URL is not set (scripts/test sets it: "
            "scripts/with-mariadb starts a throwaway MariaDB)"
        )
    return url


def cli(*args, **kwargs):
    """Runs the installed command; its CompletedProcess (text)."""
    return subprocess.run(
        [ONLYONE, *args], capture_output=True, text=True, timeout=60, **kwargs
    )


def script(tmp_path, source, filename="prog.py"):
    """Writes a Python program for a test to run as a process."""
    path = tmp_path / filename
    path.write_text(textwrap.dedent(source))
    return str(path)


def start(path, *args):
    """Starts a Python program with pipes for its output."""
    return subprocess.Popen(
        [sys.executable, path, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition, seconds):
    """Whether `condition()` became true within `seconds`, looking every
    20 ms: for what has no event to wait on (another process's exit, a
    descriptor count, another program's view of a lock)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def alive(pid):
    """Whether process `pid` runs (a zombie does not: its parent is gone
    or not reaping)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
