"""A child made by fork neither keeps its parent's lock alive nor releases
it."""

import multiprocessing
import os
import signal
import time

import onlyone
from conftest import script, start


def forking_holder(tmp_path, where):
    """A program that takes the lock and forks a child that outlives it;
    each prints its pid. With "release", the child releases the lock and
    exits (running atexit) at once; otherwise it sleeps until killed."""
    return script(
        tmp_path,
        f"""
        import os, sys, time
        import onlyone
        def say(*words):  # one write: parent and child share the pipe
            os.write(1, (" ".join(map(str, words)) + "\\n").encode())
        held = onlyone.Lock(sys.argv[1], {where}).acquire()
        child = os.fork()
        if child == 0:
            say("child", os.getpid(), held.lost)
            if sys.argv[2:] == ["release"]:
                held.release()
                sys.exit(0)
            time.sleep(120)
            os._exit(0)
        say("parent", os.getpid())
        if sys.argv[2:] == ["release"]:
            os.waitpid(child, 0)
            say("reaped")
        time.sleep(120)
        """,
    )


def wait_until(condition, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def run_fork_case(tmp_path, name, where, status, free_within):
    program = start(forking_holder(tmp_path, where), name)
    try:
        words = [program.stdout.readline().split() for _ in range(2)]
        lines = {w[0]: w[1:] for w in words}
        parent = int(lines["parent"][0])
        child = int(lines["child"][0])
        assert lines["child"][1] == "True", "a fork's guard says it holds"
        # The parent dies without releasing; the child lives on.
        os.kill(parent, signal.SIGKILL)
        program.wait()
        assert wait_until(lambda: not status().held, free_within), (
            "the child kept its parent's lock"
        )
        os.kill(child, 0)  # still alive
    finally:
        for pid in (locals().get("child"), program.pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        program.wait()


def test_a_forked_child_keeps_no_lock_file(tmp_path, lock_dir, name):
    run_fork_case(
        tmp_path,
        name,
        f"dir={lock_dir!r}",
        lambda: onlyone.status(name, dir=lock_dir),
        free_within=2,
    )


def test_a_forked_child_cannot_release_the_lock_file(tmp_path, lock_dir, name):
    check_child_release(
        tmp_path, name, f"dir={lock_dir!r}", lambda: onlyone.status(name, dir=lock_dir)
    )


def check_child_release(tmp_path, name, where, status):
    program = start(forking_holder(tmp_path, where), name, "release")
    try:
        lines = {}
        for _ in range(3):
            words = program.stdout.readline().split()
            lines[words[0]] = words[1:]
        parent = int(lines["parent"][0])
        # The child released and exited: the parent holds all the same.
        current = status()
        assert current.held and current.holder.pid == parent
        assert current.last_token == 1
    finally:
        program.kill()
        program.wait()


def test_a_multiprocessing_fork_child_does_not_hold(lock_dir, name):
    with onlyone.Lock(name, dir=lock_dir) as held:
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_report_lost, args=(held, queue))
        child.start()
        assert queue.get(timeout=30) is True
        child.join(30)
        assert onlyone.status(name, dir=lock_dir).holder.pid == os.getpid()


def _report_lost(held, queue):
    queue.put(held.lost)


def test_threads_forking_at_once_under_a_lock_are_not_held_up(tmp_path, lock_dir, name):
    # Each fork waits until its child has closed the lock's descriptors
    # (a pipe the child closes); a fork by another thread at the same
    # moment copies that pipe too, and must close it as well, or the first
    # fork waits its 5 s bound.
    program = start(
        script(
            tmp_path,
            f"""
            import os, sys, threading, time
            import onlyone
            held = onlyone.Lock(sys.argv[1], dir={lock_dir!r}).acquire()
            slowest = 0.0
            def fork(barrier):
                global slowest
                barrier.wait()
                started = time.monotonic()
                child = os.fork()
                if child == 0:
                    time.sleep(1)
                    os._exit(0)
                slowest = max(slowest, time.monotonic() - started)
                os.waitpid(child, 0)
            for _ in range(10):
                barrier = threading.Barrier(4)
                threads = [threading.Thread(target=fork, args=(barrier,)) for _ in range(4)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            print(round(slowest, 3), flush=True)
            """,
        ),
        name,
    )
    slowest = float(program.stdout.readline() or "inf")
    program.wait()
    assert slowest < 1, f"a fork took {slowest} s"
