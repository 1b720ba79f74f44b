"""The Python lock and the command on one name, the incident's program, and
bad input answered with the command's messages."""

import os
import subprocess
import sys
import time

import pytest

import onlyone
from conftest import ONLYONE, cli, script, start


def test_the_command_refuses_a_lock_python_holds(lock_dir, name):
    with onlyone.Lock(name, dir=lock_dir) as held:
        run = cli("run", "--dir", lock_dir, "--name", name, "--", "true")
    assert run.returncode == 75
    assert run.stderr == f"onlyone: lock '{name}' is held by {held.holder}\n"


def test_python_is_refused_a_lock_the_command_holds(lock_dir, name):
    holder = subprocess.Popen(
        [
            ONLYONE,
            "run", "--dir", lock_dir, "--name", name, "--",
            "sh", "-c", "echo ready; exec sleep 60",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "ready\n"
        with pytest.raises(onlyone.Held) as raised:
            onlyone.Lock(name, dir=lock_dir).acquire(blocking=False)
        assert raised.value.holder.pid == holder.pid
        assert raised.value.holder.command == ["sh", "-c", "echo ready; exec sleep 60"]
        status = cli("status", "--dir", lock_dir, name)
        assert status.returncode == 0
    finally:
        holder.terminate()
        holder.wait()
    onlyone.Lock(name, dir=lock_dir).acquire(timeout=5).release()


def test_the_incident_two_bots_started_at_once_one_runs(tmp_path, lock_dir):
    # The incident: `python3 bot.py &` twice; a home-made SingleInstance let
    # both run. Exactly one must run; the other exits 75 naming the holder.
    bot = script(
        tmp_path,
        f"""
        import sys
        import onlyone
        onlyone.single_instance("trading-bot", dir={lock_dir!r})
        print("running", flush=True)
        sys.stdin.read()
        """,
        "bot.py",
    )
    bots = [
        subprocess.Popen(
            [sys.executable, bot],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 30
        while all(b.poll() is None for b in bots) and time.monotonic() < deadline:
            time.sleep(0.01)
        losers = [b for b in bots if b.poll() is not None]
        assert len(losers) == 1, "both ran, or neither stopped"
        loser = losers[0]
        winner = bots[1 - bots.index(loser)]
        assert winner.stdout.readline() == "running\n"
        assert loser.returncode == 75
        assert loser.stdout.read() == ""
        stderr = loser.stderr.read()
        assert stderr.startswith(f"onlyone: lock 'trading-bot' is held by pid {winner.pid} on "), stderr
        assert stderr.endswith("bot.py\n"), stderr
        winner.stdin.close()
        assert winner.wait(30) == 0
    finally:
        for b in bots:
            b.kill()
            b.wait()
    # Released at exit: the next one runs.
    again = start(bot)
    assert again.stdout.readline() == "running\n"
    again.kill()
    again.wait()


@pytest.mark.parametrize(
    "lock_name",
    ["bad name", "", ".hidden", "a/b", "x" * 129],
)
def test_a_bad_name_is_a_value_error_with_the_commands_message(lock_name, lock_dir):
    with pytest.raises(ValueError) as raised:
        onlyone.Lock(lock_name, dir=lock_dir)
    assert isinstance(raised.value, onlyone.UsageError)
    assert raised.value.exit_code == 64
    command = cli("status", "--dir", lock_dir, lock_name)
    assert command.returncode == 64
    assert command.stderr == f"onlyone: error: {raised.value}\n"


def _bad_dirs(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    return [
        (str(a_file), onlyone.Unusable),
        (str(open_to_all), onlyone.Refused),
        (str(link), onlyone.Refused),
    ]


def test_a_bad_directory_raises_as_the_command_exits(tmp_path, name):
    for path, kind in _bad_dirs(tmp_path):
        with pytest.raises(kind) as raised:
            onlyone.Lock(name, dir=path).acquire(blocking=False)
        command = cli("run", "--dir", path, "--name", name, "--", "true")
        assert command.returncode == raised.value.exit_code, path
        assert command.stderr == f"onlyone: error: {raised.value}\n"


@pytest.mark.parametrize(
    "url",
    [
        "postgres://h:notaport/db",
        "sslmode=bogus host=x",
        "postgres://root@127.0.0.1:1/test?connect_timeout=2",
    ],
)
def test_a_bad_url_raises_as_the_command_exits(url, name):
    with pytest.raises(onlyone.Error) as raised:
        onlyone.Lock(name, postgres=url).acquire(blocking=False)
    command = cli("status", "--postgres", url, name)
    assert command.returncode == raised.value.exit_code
    assert command.stderr == f"onlyone: error: {raised.value}\n"


def test_an_empty_url_is_refused(name):
    with pytest.raises(onlyone.UsageError, match="the PostgreSQL URL is empty"):
        onlyone.Lock(name, postgres=" ")


def test_postgres_options_need_postgres(lock_dir, name):
    with pytest.raises(onlyone.UsageError, match="key= is for a PostgreSQL lock"):
        onlyone.Lock(name, dir=lock_dir, key=5)


def test_bad_timeouts_are_value_errors(lock_dir, name):
    lock = onlyone.Lock(name, dir=lock_dir)
    for timeout in (-1, float("nan")):
        with pytest.raises(ValueError):
            lock.acquire(timeout=timeout)


def test_the_command_in_the_wheel_is_the_command():
    version = cli("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("onlyone ")


def test_the_wheels_command_gives_its_command_no_ignored_signals(lock_dir, name):
    # Python ignores SIGPIPE and SIGXFSZ in itself; the command it runs
    # must start as under the Rust binary, with every signal's default.
    run = cli(
        "run", "--dir", lock_dir, "--name", name, "--",
        "sh", "-c", "grep SigIgn /proc/self/status",
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "SigIgn:\t0000000000000000\n"
