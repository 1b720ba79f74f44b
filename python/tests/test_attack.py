"""The adversarial pass on the Python package (branch a13): each test is a
finding, which failed on the code of the attack (as an xfail(strict=True)
test) and passes since its fix (branch i13c). Reproductions by hand:
scripts/attack/python/ (its README names the script of each finding)."""

import gc
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest

import onlyone
from conftest import ONLYONE, alive, cli, script, start, wait_until

# PostgreSQL: a short heartbeat keeps the loss quick, T = 2 x 0.2 s + 1 s.
HEARTBEAT = 0.2
DEADLINE = 2 * HEARTBEAT + 1
KILL_GRACE = 5


def kill_quietly(*pids):
    for pid in pids:
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def worker_program(tmp_path, where, heartbeat=""):
    """A bot as the incident's: the lock, then a multiprocessing worker
    (fork) doing the protected work; prints both pids."""
    return script(
        tmp_path,
        f"""
        import multiprocessing, os, sys, time
        import onlyone

        def work():
            time.sleep(120)

        if __name__ == "__main__":
            lock = onlyone.Lock(sys.argv[1], {where}{heartbeat})
            held = lock.acquire(blocking=False)
            worker = multiprocessing.get_context("fork").Process(target=work)
            worker.start()
            print(os.getpid(), worker.pid, flush=True)
            while True:
                time.sleep(1)
        """,
    )


def test_a_worker_does_not_outlive_a_killed_holders_lock(tmp_path, lock_dir, name):
    program = start(worker_program(tmp_path, f"dir={lock_dir!r}"), name)
    worker = None
    try:
        parent, worker = map(int, program.stdout.readline().split())
        os.kill(parent, signal.SIGKILL)  # the OOM killer, a kill -9
        program.wait()
        wait_until(lambda: not alive(worker), 2)
        # Exactly one instance: the old worker is gone, or it still keeps
        # the next instance out.
        assert not alive(worker) or onlyone.status(name, dir=lock_dir).held, (
            "the lock is free while the old instance's worker still runs"
        )
    finally:
        kill_quietly(worker, program.pid)
        program.wait()


def test_a_worker_stops_within_t_plus_g_of_a_lost_lock(tmp_path, pg_url, name):
    program = start(
        worker_program(tmp_path, f"postgres={pg_url!r}", f", heartbeat={HEARTBEAT}"), name
    )
    worker = None
    try:
        parent, worker = map(int, program.stdout.readline().split())
        stop = cli("stop", "--signal", "KILL", "--postgres", pg_url, name)
        assert stop.returncode == 0, stop.stderr
        assert program.wait(DEADLINE + KILL_GRACE) == 74
        # A successor starts T + G + 2 s after the loss: by T + G nothing
        # of this instance may run.
        assert wait_until(lambda: not alive(worker), DEADLINE + KILL_GRACE), (
            "the worker still runs T + G after the loss"
        )
    finally:
        kill_quietly(worker, program.pid)
        program.wait()


def test_a_guard_dropped_while_held_is_not_freed_silently(lock_dir, name):
    lock = onlyone.Lock(name, dir=lock_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lock.acquire(timeout=5)  # as `FileLock(...).acquire()` is written
        gc.collect()
    still_held = onlyone.status(name, dir=lock_dir).held
    warned = any(
        issubclass(w.category, ResourceWarning) and name in str(w.message) for w in caught
    )
    assert still_held or warned, "the lock was let go of with no word"


def test_on_lost_raise_is_not_swallowed_by_a_retry_loop(tmp_path, pg_url, name):
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
                while True:
                    try:
                        time.sleep(0.01)  # a step of the work
                    except Exception as err:  # log and retry, as bots do
                        print("retrying after", type(err).__name__, flush=True)
            """,
        ),
        name,
    )
    try:
        assert program.stdout.readline() == "holding\n"
        stop = cli("stop", "--signal", "KILL", "--postgres", pg_url, name)
        assert stop.returncode == 0, stop.stderr
        # The successor starts T + G + 2 s after the loss.
        try:
            program.wait(DEADLINE + KILL_GRACE)
        except subprocess.TimeoutExpired:
            pytest.fail("the program works on after the loss: " + program.stdout.readline())
    finally:
        program.kill()
        program.wait()


def test_with_blocks_in_two_threads_release_their_own_guards(lock_dir, name):
    lock = onlyone.Lock(name, dir=lock_dir)
    a_released, b_entered, a_done = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with lock as held:
            held.release()  # the critical part is done; tail work follows
            a_released.set()
            b_entered.wait(10)
        a_done.set()

    def b():
        a_released.wait(10)
        with lock as held:
            b_entered.set()
            a_done.wait(10)
            seen["lost"] = held.lost
            other = onlyone.Lock(name, dir=lock_dir).try_acquire()
            seen["third"] = other is not None
            if other is not None:
                other.release()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert seen["lost"] is False  # B believes it holds ...
    assert not seen["third"], "... and a third holder took the lock meanwhile"


def lock_file_descriptors():
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").endswith(".lock")
        except OSError:
            pass
    return count


def test_a_long_wait_on_files_keeps_threads_and_descriptors_few(lock_dir, name):
    threads_before = len(os.listdir("/proc/self/task"))
    with onlyone.Lock(name, dir=lock_dir):
        with pytest.raises(onlyone.Held):
            onlyone.Lock(name, dir=lock_dir).acquire(timeout=2)
        threads = len(os.listdir("/proc/self/task")) - threads_before
        descriptors = lock_file_descriptors()
    assert wait_until(lambda: lock_file_descriptors() == 0, 5)
    assert threads <= 3 and descriptors <= 2, (
        f"after a 2 s wait: {threads} more threads, {descriptors} lock-file descriptors"
    )


def test_a_fork_during_a_wait_leaves_the_child_no_lock(tmp_path, lock_dir, name):
    # The other holder first: the program below must find the lock taken.
    holder = subprocess.Popen(
        [ONLYONE, "run", "--dir", lock_dir, "--name", name, "--", "sleep", "3"]
    )
    assert wait_until(lambda: onlyone.status(name, dir=lock_dir).held, 10)
    program = start(
        script(
            tmp_path,
            f"""
            import os, sys, threading, time
            import onlyone
            name = sys.argv[1]
            got = {{}}
            def wait():
                try:
                    got["held"] = onlyone.Lock(name, dir={lock_dir!r}).acquire(timeout=10)
                except onlyone.Held as held:
                    got["error"] = str(held)
            waiter = threading.Thread(target=wait)
            waiter.start()
            time.sleep(0.5)  # the wait is under way: the bot starts a worker
            child = os.fork()
            if child == 0:
                time.sleep(60)
                os._exit(0)
            print(child, flush=True)
            waiter.join()
            if "error" in got:
                print("gave up:", got["error"], flush=True)
                sys.exit(0)
            got["held"].release()
            print("free after release:", onlyone.status(name, dir={lock_dir!r}).held is False, flush=True)
            """,
        ),
        name,
    )
    child = None
    try:
        child = int(program.stdout.readline())
        outcome = program.stdout.readline()
        assert outcome == "free after release: True\n", outcome
    finally:
        kill_quietly(child)
        program.kill()
        program.wait()
        holder.wait()


def test_a_fork_after_a_restored_lock_file_leaves_the_child_no_lock(
    tmp_path, lock_dir, name
):
    program = start(
        script(
            tmp_path,
            f"""
            import os, sys, time
            import onlyone
            name, path = sys.argv[1], os.path.join({lock_dir!r}, sys.argv[1] + ".lock")
            held = onlyone.Lock(name, dir={lock_dir!r}).acquire()
            os.unlink(path)  # a cleanup script
            while not os.path.exists(path):
                time.sleep(0.01)
            time.sleep(0.1)  # the record is written back
            child = os.fork()
            if child == 0:
                time.sleep(60)
                os._exit(0)
            print(child, flush=True)
            held.release()
            print("free after release:", not onlyone.status(name, dir={lock_dir!r}).held, flush=True)
            """,
        ),
        name,
    )
    child = None
    try:
        child = int(program.stdout.readline())
        outcome = program.stdout.readline()
        assert outcome == "free after release: True\n", outcome
    finally:
        kill_quietly(child)
        program.kill()
        program.wait()


def test_waiting_for_a_lock_this_thread_holds_says_so(tmp_path, lock_dir, name):
    program = start(
        script(
            tmp_path,
            f"""
            import sys
            import onlyone
            lock = onlyone.Lock(sys.argv[1], dir={lock_dir!r})
            with lock.acquire():
                print("holding", flush=True)
                lock.acquire()  # e.g. a helper that takes the lock itself
            """,
        ),
        name,
    )
    try:
        assert program.stdout.readline() == "holding\n"
        try:
            program.wait(3)
        except subprocess.TimeoutExpired:
            program.kill()
            program.wait()
        stderr = program.stderr.read()
        assert str(program.pid) in stderr or "this process" in stderr, (
            f"waits for itself without a word (stderr: {stderr!r})"
        )
    finally:
        program.kill()
        program.wait()


def test_ctrl_c_ends_a_try_in_a_lock_delay(tmp_path, pg_url, name):
    holder = start(
        script(
            tmp_path,
            f"""
            import sys, time
            import onlyone
            onlyone.single_instance(sys.argv[1], postgres={pg_url!r})
            print("holding", flush=True)
            time.sleep(120)
            """,
        ),
        name,
    )
    assert holder.stdout.readline() == "holding\n"
    holder.kill()  # an unclean end: the next holder waits the lock-delay
    holder.wait()
    assert wait_until(lambda: not onlyone.status(name, postgres=pg_url).held, 5)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with onlyone.Lock(name, postgres=pg_url):
            pass
    assert time.monotonic() - started < 0.3 + 0.5


@pytest.mark.parametrize(
    "where, code",
    [("dir=unsafe", 77), ("postgres='postgres://root@127.0.0.1:1/test'", 69)],
)
def test_single_instance_exits_with_the_commands_code(tmp_path, name, where, code):
    unsafe = tmp_path / "everyone"
    unsafe.mkdir()
    unsafe.chmod(0o777)  # no sticky bit: refused
    path = script(
        tmp_path,
        f"""
        import sys
        import onlyone
        unsafe = {str(unsafe)!r}
        onlyone.single_instance(sys.argv[1], {where})
        """,
    )
    ran = subprocess.run(
        [sys.executable, path, name], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == code, ran.stderr
    assert ran.stderr.startswith("onlyone: error: "), ran.stderr


@pytest.mark.parametrize("through", ["argument", "environment"])
def test_an_empty_directory_is_a_usage_error(monkeypatch, name, through):
    if through == "environment":
        monkeypatch.setenv("ONLYONE_DIR", "")
        given = {}
    else:
        given = {"dir": ""}
    with pytest.raises(onlyone.UsageError):
        onlyone.Lock(name, **given).try_acquire()


def test_cancelled_async_waits_do_not_pile_up_sessions(pg_url, name):
    import asyncio

    async def retry(lock, times):
        for _ in range(times):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(lock.acquire_async(), 0.3)

    with onlyone.Lock(name, postgres=pg_url):
        asyncio.run(retry(onlyone.Lock(name, postgres=pg_url), 4))
        time.sleep(0.5)
        waiters = onlyone.status(name, postgres=pg_url).waiters
        # At most the last wait, still ending.
        assert len(waiters) <= 1, waiters


def test_a_program_with_a_non_utf8_argument_can_lock(tmp_path, lock_dir, name):
    path = script(
        tmp_path,
        f"""
        import sys
        import onlyone
        held = onlyone.single_instance(sys.argv[1], dir={lock_dir!r})
        print("holding", held.token, flush=True)
        """,
    )
    ran = subprocess.run(
        [os.fsencode(sys.executable), os.fsencode(path), name.encode(), b"caf\xe9.csv"],
        capture_output=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr.decode(errors="replace")
    assert ran.stdout == b"holding 1\n"
