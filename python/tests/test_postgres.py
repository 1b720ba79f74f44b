"""The PostgreSQL lock: conflicts, tokens, a session ended by the server,
and fork. Needs ONLYONE_TEST_POSTGRES_URL (scripts/test sets it)."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import onlyone
import conftest
from conftest import cli, script, start
from test_fork import check_child_release, run_fork_case

# A short heartbeat keeps the loss tests quick: T = 2 x 0.2 s + 1 s.
HEARTBEAT = 0.2
DEADLINE = 2 * HEARTBEAT + 1
KILL_GRACE = 5


def test_a_second_holder_gets_held_naming_the_session(pg_url, name):
    with onlyone.Lock(name, postgres=pg_url) as held:
        with pytest.raises(onlyone.Held) as raised:
            onlyone.Lock(name, postgres=pg_url).acquire(blocking=False)
        holder = raised.value.holder
        assert holder.pid == os.getpid()
        assert holder.token == held.token
        assert holder.server_pid is not None
        assert str(raised.value) == f"lock '{name}' is held by {holder}"
        status = onlyone.status(name, postgres=pg_url)
        assert status.held and status.holder.server_pid == holder.server_pid


def fenced(pg_url, fence_sql):
    """Runs ``fence_sql`` in a transaction through psql; its result."""
    return subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", pg_url, "-c",
         f"BEGIN; {fence_sql}; COMMIT"],
        capture_output=True, text=True, timeout=30,
    )


def test_fence_sql_passes_for_the_holder_and_refuses_a_stale_token(pg_url, name, lock_dir):
    with onlyone.Lock(name, postgres=pg_url) as held:
        fence_sql = held.fence_sql
        assert fence_sql is not None and "onlyone_fence" in fence_sql
        assert held.env["ONLYONE_FENCE"] == fence_sql
        passed = fenced(pg_url, fence_sql)
        assert passed.returncode == 0, passed.stderr
    with onlyone.Lock(name, postgres=pg_url):
        refused = fenced(pg_url, fence_sql)
        assert refused.returncode != 0 and "stale" in refused.stderr.lower(), refused.stderr
    with onlyone.Lock(name, dir=lock_dir) as on_file:
        assert on_file.fence_sql is None


def test_tokens_grow_with_each_holder(pg_url, name):
    lock = onlyone.Lock(name, postgres=pg_url)
    tokens = []
    for _ in range(3):
        with lock as held:
            tokens.append(held.token)
    assert tokens == sorted(set(tokens)) and len(tokens) == 3


def test_the_command_and_python_exclude_each_other(pg_url, name):
    with onlyone.Lock(name, postgres=pg_url) as held:
        run = cli("run", "--postgres", pg_url, "--name", name, "--", "true")
        assert run.returncode == 75
        assert f"held by pid {os.getpid()} on " in run.stderr
    run = cli("run", "--postgres", pg_url, "--name", name, "--", "true")
    assert run.returncode == 0, run.stderr
    assert onlyone.status(name, postgres=pg_url).last_token == held.token + 1


def test_a_wait_with_a_timeout_gives_up_after_it(pg_url, name):
    with onlyone.Lock(name, postgres=pg_url):
        started = time.monotonic()
        with pytest.raises(onlyone.Held):
            onlyone.Lock(name, postgres=pg_url).acquire(timeout=0.5)
        assert 0.3 <= time.monotonic() - started <= 0.9


def test_a_waiter_takes_the_lock_when_it_is_released(pg_url, name):
    holder = onlyone.Lock(name, postgres=pg_url).acquire()
    threading.Timer(0.3, holder.release).start()
    with onlyone.Lock(name, postgres=pg_url).acquire(timeout=10) as held:
        assert held.token == holder.token + 1


def end_session(pg_url, name):
    """Ends the holder's database session, as an operator or a failover
    would (`onlyone stop --signal KILL` calls pg_terminate_backend on it,
    without asking first)."""
    stop = cli("stop", "--signal", "KILL", "--postgres", pg_url, name)
    assert stop.returncode == 0, stop.stderr


def test_on_lost_calls_back_within_the_deadline(pg_url, name):
    reasons = []
    called = threading.Event()

    def on_lost(reason):
        reasons.append(reason)
        called.set()

    held = onlyone.Lock(name, postgres=pg_url, heartbeat=HEARTBEAT, on_lost=on_lost).acquire()
    ended = time.monotonic()
    end_session(pg_url, name)
    assert called.wait(DEADLINE + KILL_GRACE), "on_lost never fired"
    assert time.monotonic() - ended <= DEADLINE + KILL_GRACE
    assert held.lost and held.lost_reason == reasons[0]
    assert held.wait_lost(0) is True


def test_on_lost_exit_ends_the_program_with_74(tmp_path, pg_url, name):
    program = start(
        script(
            tmp_path,
            f"""
            import sys, time
            import onlyone
            onlyone.single_instance(sys.argv[1], postgres={pg_url!r})
            print("holding", flush=True)
            while True:
                time.sleep(1)
            """,
        ),
        name,
    )
    try:
        assert program.stdout.readline() == "holding\n"
        ended = time.monotonic()
        end_session(pg_url, name)
        assert program.wait(DEADLINE * 3 + KILL_GRACE) == 74
        assert time.monotonic() - ended <= 3 + KILL_GRACE  # the default T is 3 s
        stderr = program.stderr.read()
        assert stderr.startswith(f"onlyone: error: lost lock '{name}' ("), stderr
        assert stderr.endswith("; the program was ended\n"), stderr
    finally:
        program.kill()
        program.wait()


def test_on_lost_raise_raises_lost_in_the_main_thread(tmp_path, pg_url, name):
    program = start(
        script(
            tmp_path,
            f"""
            import sys, time
            import onlyone
            lock = onlyone.Lock(sys.argv[1], postgres={pg_url!r},
                                heartbeat={HEARTBEAT}, on_lost="raise")
            with lock:
                print("holding", flush=True)
                try:
                    while True:
                        time.sleep(0.01)
                except onlyone.Lost as lost:
                    print("lost:", lost, flush=True)
            """,
        ),
        name,
    )
    try:
        assert program.stdout.readline() == "holding\n"
        end_session(pg_url, name)
        line = program.stdout.readline()
        assert line.startswith(f"lost: lost lock '{name}' ("), line
    finally:
        program.kill()
        program.wait()


def test_a_forked_child_keeps_no_session(tmp_path, pg_url, name):
    # The server ends an idle holder's session after the heartbeat deadline
    # (3 s here) in any case; the lock must be free long before, when the
    # parent's death closes the connection.
    run_fork_case(
        tmp_path,
        name,
        f"postgres={pg_url!r}",
        lambda: onlyone.status(name, postgres=pg_url),
        free_within=1,
    )


def test_a_forked_child_cannot_release_the_session_lock(tmp_path, pg_url, name):
    check_child_release(
        tmp_path, name, f"postgres={pg_url!r}", lambda: onlyone.status(name, postgres=pg_url)
    )


def test_ctrl_c_interrupts_a_postgres_wait(pg_url, name):
    with onlyone.Lock(name, postgres=pg_url):
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            onlyone.Lock(name, postgres=pg_url).acquire(timeout=10)
        assert time.monotonic() - started < 0.3 + 0.1


def test_stop_asks_a_python_holder_which_releases_cleanly(pg_url, name):
    """On PostgreSQL ``onlyone stop`` asks the holder first: a library
    holder sees who asked (``stop_requested``), still holds the lock, and
    releases it; ``stop`` then returns 0 and the next holder needs no
    lock-delay (its token follows at once)."""
    with onlyone.Lock(name, postgres=pg_url) as held:
        assert held.stop_requested is None
        stop = subprocess.Popen(
            [conftest.ONLYONE, "stop", "--postgres", pg_url, name, "--timeout", "20s"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while held.stop_requested is None:
            assert time.monotonic() < deadline, "the request never arrived"
            time.sleep(0.01)
        assert ":" in held.stop_requested
        assert not held.lost
    out, err = stop.communicate(timeout=20)
    assert stop.returncode == 0, err
    started = time.monotonic()
    with onlyone.Lock(name, postgres=pg_url) as after:
        assert after.token == held.token + 1
    assert time.monotonic() - started < 2
