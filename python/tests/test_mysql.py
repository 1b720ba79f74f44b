"""The MySQL/MariaDB lock (``mysql=``): real processes in conflict, tokens
across holders, a session killed in the server, waits (threads, asyncio,
Ctrl-C), fork, and the arguments that go with it. The server tests need
ONLYONE_TEST_MYSQL_URL (scripts/test sets it: scripts/with-mariadb)."""

import asyncio
import getpass
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

import onlyone
from conftest import cli, script, wait_until
from test_fork import check_child_release, run_fork_case

# A short heartbeat keeps the loss tests quick: T = 2 x 0.2 s + 1 s.
HEARTBEAT = 0.2
DEADLINE = 2 * HEARTBEAT + 1
KILL_GRACE = 5


def sql(url, statement):
    """Runs ``statement`` with the ``mariadb`` client on the server of
    ``url``; its output, trimmed."""
    parts = urllib.parse.urlsplit(url)
    env = dict(os.environ)
    if parts.password:
        env["MYSQL_PWD"] = urllib.parse.unquote(parts.password)
    run = subprocess.run(
        [
            "mariadb", "--no-defaults",
            "-h", parts.hostname or "127.0.0.1",
            "-P", str(parts.port or 3306),
            "-u", urllib.parse.unquote(parts.username or getpass.getuser()),
            "-N", "-B", parts.path.lstrip("/"),
            "-e", statement,
        ],
        capture_output=True, text=True, timeout=30, env=env,
    )
    assert run.returncode == 0, f"{statement}: {run.stderr}"
    return run.stdout.strip()


def lock_name_in_server(url, name):
    """The name onlyone gives GET_LOCK, as ``Lock.location`` shows it."""
    location = onlyone.Lock(name, mysql=url).location
    assert location.endswith("'"), location
    return location.rsplit(" lock '", 1)[1][:-1]


def kill_session(url, name):
    """Ends the holder's session in the server, as an operator (or
    ``onlyone stop --mysql``) would."""
    connection = onlyone.status(name, mysql=url).holder.server_pid
    assert connection is not None
    sql(url, f"KILL CONNECTION {connection}")


def holding_program(tmp_path, url):
    """A program that takes the lock ``argv[1]`` for its life, says
    ``holding TOKEN`` and holds it until stdin ends."""
    return script(
        tmp_path,
        f"""
        import sys
        import onlyone
        held = onlyone.single_instance(sys.argv[1], mysql={url!r})
        print("holding", held.token, flush=True)
        sys.stdin.readline()
        """,
        "holder.py",
    )


def start_holding(path, name):
    return subprocess.Popen(
        [sys.executable, path, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def holding_token(program):
    line = program.stdout.readline()
    assert line.startswith("holding "), (line, program.stderr.read())
    return int(line.split()[1])


def finish(program):
    """Lets the holder go (it releases at exit); its exit status."""
    try:
        program.stdin.close()
        return program.wait(30)
    finally:
        program.kill()
        program.wait()


def test_a_second_process_is_refused_naming_the_holder(tmp_path, my_url, name):
    path = holding_program(tmp_path, my_url)
    first = start_holding(path, name)
    try:
        token = holding_token(first)
        second = subprocess.run(
            [sys.executable, path, name],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        assert second.returncode == 75, second.stderr
        assert second.stderr.startswith(
            f"onlyone: lock '{name}' is held by pid {first.pid} on "
        ), second.stderr
        # The holder as the server sees it: the session that has the named
        # lock, and the record that the state table keeps for it.
        status = onlyone.status(name, mysql=my_url)
        assert status.held and status.holder.pid == first.pid
        assert status.holder.token == token == status.last_token
        in_server = sql(my_url, f"SELECT IS_USED_LOCK('{lock_name_in_server(my_url, name)}')")
        assert status.holder.server_pid == int(in_server)
        # In this process, the same refusal as an exception.
        with pytest.raises(onlyone.Held) as raised:
            onlyone.Lock(name, mysql=my_url).acquire(blocking=False)
        assert raised.value.holder.pid == first.pid
        assert str(raised.value) == f"lock '{name}' is held by {raised.value.holder}"
    finally:
        assert finish(first) == 0
    assert not onlyone.status(name, mysql=my_url).held


def test_tokens_grow_across_holders_python_and_the_command(tmp_path, my_url, name):
    path = holding_program(tmp_path, my_url)
    tokens = []
    for _ in range(2):
        program = start_holding(path, name)
        tokens.append(holding_token(program))
        assert finish(program) == 0
    with onlyone.Lock(name, mysql=my_url) as held:
        tokens.append(held.token)
        assert held.lost is False
        refused = cli("run", "--mysql", my_url, "--name", name, "--", "true")
        assert refused.returncode == 75, refused.stderr
        assert f"held by pid {os.getpid()} on " in refused.stderr
    run = cli("run", "--mysql", my_url, "--name", name, "--", "true")
    assert run.returncode == 0, run.stderr
    tokens.append(onlyone.status(name, mysql=my_url).last_token)
    assert tokens == list(range(tokens[0], tokens[0] + 4)), tokens


def mysql_error(url, statement):
    """Runs ``statement`` with the ``mariadb`` client, expecting it to
    fail; its error."""
    parts = urllib.parse.urlsplit(url)
    run = subprocess.run(
        [
            "mariadb", "--no-defaults",
            "-h", parts.hostname or "127.0.0.1",
            "-P", str(parts.port or 3306),
            "-u", urllib.parse.unquote(parts.username or getpass.getuser()),
            "-N", "-B", parts.path.lstrip("/"),
            "-e", statement,
        ],
        capture_output=True, text=True, timeout=30,
    )
    assert run.returncode != 0, f"{statement}: {run.stdout}"
    return run.stderr


def test_fence_sql_passes_for_the_holder_and_refuses_a_stale_token(my_url, name):
    with onlyone.Lock(name, mysql=my_url) as held:
        fence_sql = held.fence_sql
        assert fence_sql is not None and ".onlyone_fence('" in fence_sql, fence_sql
        assert fence_sql.endswith(f"'{name}', {held.token})"), fence_sql
        assert held.env["ONLYONE_FENCE"] == fence_sql
        assert sql(my_url, f"START TRANSACTION; {fence_sql}; COMMIT") == str(held.token)
    refused = mysql_error(my_url, f"START TRANSACTION; {fence_sql}; COMMIT")
    assert "(ON001)" in refused and "onlyone: stale fencing token" in refused, refused


def test_a_killed_session_calls_on_lost_within_the_deadline(my_url, name):
    reasons = []
    called = threading.Event()

    def on_lost(reason):
        reasons.append(reason)
        called.set()

    lock = onlyone.Lock(name, mysql=my_url, heartbeat=HEARTBEAT, on_lost=on_lost)
    held = lock.acquire()
    assert not held.lost and held.lost_reason is None
    ended = time.monotonic()
    kill_session(my_url, name)
    assert called.wait(DEADLINE + KILL_GRACE), "on_lost never fired"
    assert time.monotonic() - ended <= DEADLINE + KILL_GRACE
    assert held.lost and held.lost_reason == reasons[0]
    assert held.wait_lost(0) is True
    assert held.stop_requested is None
    held.release()  # a lost lock's release does nothing harmful


def test_a_killed_session_ends_the_program_with_74(tmp_path, my_url, name):
    program = start_holding(holding_program(tmp_path, my_url), name)
    try:
        holding_token(program)
        ended = time.monotonic()
        kill_session(my_url, name)
        assert program.wait(DEADLINE * 3 + KILL_GRACE) == 74
        assert time.monotonic() - ended <= 3 + KILL_GRACE  # the default T is 3 s
        stderr = program.stderr.read()
        assert stderr.startswith(f"onlyone: error: lost lock '{name}' ("), stderr
        assert stderr.endswith("; the program was ended\n"), stderr
    finally:
        program.kill()
        program.wait()


def waiting_in_server(url, name):
    """Whether a session waits in GET_LOCK for the lock ``name``."""
    lock_name = lock_name_in_server(url, name)
    count = sql(
        url,
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
        f"WHERE INFO LIKE 'SELECT GET_LOCK(''{lock_name}'',%' AND TIME >= 0",
    )
    return int(count) > 0


def test_acquire_async_waits_and_gets_the_lock_at_the_release(my_url, name):
    async def main():
        holder = onlyone.Lock(name, mysql=my_url).acquire()
        waiter = asyncio.ensure_future(
            onlyone.Lock(name, mysql=my_url).acquire_async(timeout=30)
        )
        loop = asyncio.get_running_loop()
        # What the test waits for has no event of its own: the waiter's
        # session seen waiting in the server, looked for in a thread.
        seen = await loop.run_in_executor(
            None, wait_until, lambda: waiting_in_server(my_url, name), 20
        )
        assert seen, "the waiter never waited in the server"
        # The loop ran the look above while the waiter waited: not blocked.
        assert not waiter.done()
        await loop.run_in_executor(None, holder.release)
        released = time.monotonic()
        held = await waiter
        got_it_after = time.monotonic() - released
        token = held.token
        await loop.run_in_executor(None, held.release)
        return holder.token, token, got_it_after

    first, second, after = asyncio.run(main())
    assert second == first + 1
    # GET_LOCK wakes at the release: no second of polling in between.
    assert after < 0.5, after


def test_a_cancelled_async_wait_lets_go_of_the_lock(my_url, name):
    async def main():
        holder = onlyone.Lock(name, mysql=my_url).acquire()
        waiter = asyncio.ensure_future(
            onlyone.Lock(name, mysql=my_url).acquire_async()
        )
        loop = asyncio.get_running_loop()
        seen = await loop.run_in_executor(
            None, wait_until, lambda: waiting_in_server(my_url, name), 20
        )
        assert seen, "the waiter never waited in the server"
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await loop.run_in_executor(None, holder.release)
        # The cancelled wait ends within its slice (1 s) and lets go of
        # whatever it took: a new holder gets the lock within it.
        started = time.monotonic()
        held = await onlyone.Lock(name, mysql=my_url).acquire_async(timeout=10)
        waited = time.monotonic() - started
        await loop.run_in_executor(None, held.release)
        return waited

    assert asyncio.run(main()) < 3


def test_a_waiter_sits_out_the_lock_delay_of_a_killed_holder(tmp_path, my_url, name):
    """A holder killed with SIGKILL leaves its row held: the waiter that
    the server wakes must wait the lock-delay once and then hold, not take
    the lock in one wait slice, give it up at the slice's end and start
    the delay over in the next (which would never end)."""
    holder = start_holding(holding_program(tmp_path, my_url), name)
    token = holding_token(holder)
    result = {}
    done = threading.Event()

    def wait():
        try:
            started = time.monotonic()
            with onlyone.Lock(name, mysql=my_url).acquire(timeout=60) as held:
                result["token"] = held.token
                result["waited"] = time.monotonic() - started
        except BaseException as err:
            result["error"] = err
        finally:
            done.set()

    threading.Thread(target=wait).start()
    try:
        assert wait_until(lambda: waiting_in_server(my_url, name), 20)
    finally:
        holder.kill()
        holder.wait()
    killed = time.monotonic()
    # The holder's default timing: T 3 s + kill grace 5 s + 2 s.
    delay = 3 + KILL_GRACE + 2
    assert done.wait(60), "the waiter never returned"
    assert "error" not in result, result
    # Larger than the killed holder's (the slice that gave the lock up
    # again had its own token, never used).
    assert result["token"] > token
    assert delay <= time.monotonic() - killed <= delay + 5, result


def test_a_wait_with_a_timeout_gives_up_after_it(my_url, name):
    with onlyone.Lock(name, mysql=my_url):
        started = time.monotonic()
        with pytest.raises(onlyone.Held) as raised:
            onlyone.Lock(name, mysql=my_url).acquire(timeout=1.5)
        waited = time.monotonic() - started
        assert 1.3 <= waited <= 2.5, waited
        assert raised.value.holder.pid == os.getpid()


def test_ctrl_c_interrupts_a_mysql_wait(my_url, name):
    with onlyone.Lock(name, mysql=my_url):
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            onlyone.Lock(name, mysql=my_url).acquire(timeout=10)
        assert time.monotonic() - started < 0.3 + 0.2


def test_a_forked_child_keeps_no_session(tmp_path, my_url, name):
    run_fork_case(
        tmp_path,
        name,
        f"mysql={my_url!r}",
        lambda: onlyone.status(name, mysql=my_url),
        free_within=1,
    )


def test_a_forked_child_cannot_release_the_session_lock(tmp_path, my_url, name):
    check_child_release(
        tmp_path, name, f"mysql={my_url!r}", lambda: onlyone.status(name, mysql=my_url)
    )


def test_the_url_from_the_environment(monkeypatch, my_url, name, lock_dir):
    monkeypatch.setenv("ONLYONE_MYSQL_URL", my_url)
    lock = onlyone.Lock(name)
    assert lock.location.startswith("mysql://")
    with lock as held:
        assert onlyone.status(name).holder.token == held.token
        # dir= still means lock files, whatever the environment says.
        with onlyone.Lock(name, dir=lock_dir) as on_file:
            assert on_file.token == 1


def test_an_unreachable_server_raises_as_the_command_exits(name):
    url = "mysql://root@127.0.0.1:1/test"
    with pytest.raises(onlyone.Unusable) as raised:
        onlyone.Lock(name, mysql=url).acquire(blocking=False)
    command = cli("status", "--mysql", url, name)
    assert command.returncode == raised.value.exit_code == 69
    assert command.stderr == f"onlyone: error: {raised.value}\n"


def test_a_url_without_a_database_is_a_usage_error_as_for_the_command(name):
    url = "mysql://root@127.0.0.1:1"
    with pytest.raises(onlyone.UsageError) as raised:
        onlyone.Lock(name, mysql=url)
    command = cli("status", "--mysql", url, name)
    assert command.returncode == raised.value.exit_code == 64
    assert command.stderr == f"onlyone: error: {raised.value}\n"


URL = "mysql://bot@127.0.0.1:1/app"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(postgres="postgres://h/db", mysql=URL), r"postgres= .* or mysql= .*, not both"),
        (dict(dir="/tmp", mysql=URL), r"dir= .* or mysql= .*, not both"),
        (
            dict(dir="/tmp", postgres="postgres://h/db", mysql=URL),
            "give one of dir=, postgres= and mysql=",
        ),
        (dict(mysql=URL, key=5), "key= is for a PostgreSQL lock, not with mysql="),
        (dict(mysql=URL, table="t"), "table= is for a PostgreSQL lock, not with mysql="),
        (dict(mysql=" "), "the MySQL URL is empty"),
        (dict(heartbeat=1), "heartbeat= is for a database lock: it needs postgres= or mysql="),
    ],
)
def test_arguments_that_do_not_go_together_are_value_errors(arguments, message, name):
    calls = [lambda: onlyone.Lock(name, **arguments)]
    if "heartbeat" not in arguments:
        calls.append(lambda: onlyone.status(name, **arguments))
    for call in calls:
        with pytest.raises(ValueError, match=message) as raised:
            call()
        assert isinstance(raised.value, onlyone.UsageError)
        assert raised.value.exit_code == 64


def test_both_url_variables_set_is_a_value_error(monkeypatch, name):
    monkeypatch.setenv("ONLYONE_POSTGRES_URL", "postgres://h/db")
    monkeypatch.setenv("ONLYONE_MYSQL_URL", URL)
    with pytest.raises(ValueError, match="ONLYONE_POSTGRES_URL and ONLYONE_MYSQL_URL"):
        onlyone.Lock(name)
    # An argument chooses, and the other variable is not looked at.
    assert onlyone.Lock(name, mysql=URL).location.startswith("mysql://")
    assert "mysql" not in onlyone.Lock(name, postgres="postgres://h/db").location


def test_single_instance_takes_mysql(tmp_path, name):
    program = subprocess.run(
        [
            sys.executable,
            script(
                tmp_path,
                f"""
                import onlyone
                onlyone.single_instance({name!r}, mysql="mysql://root@127.0.0.1:1/test")
                """,
            ),
        ],
        capture_output=True, text=True, timeout=60,
    )
    assert program.returncode == 69, program.stderr
    assert program.stderr.startswith("onlyone: error: "), program.stderr
