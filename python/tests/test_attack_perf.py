"""The attack on issue 15's speed changes, Python side: each test is one
finding, and failed on the code as it was found."""

import os
import signal

import pytest

from conftest import alive, script, start, wait_until


def test_a_worker_forked_by_a_thread_of_a_holder_with_many_descriptors_dies_with_it(
    tmp_path, lock_dir, name
):
    """Finding 3: the fork hooks waited on their pipe, and a child forked
    by another thread than the main one watched its parent's pidfd, with
    select(), which refuses a descriptor numbered 1024 or more. A holder
    with many descriptors open (a server, a process holding hundreds of
    locks) got a ValueError in both: the parent did not wait for the child
    to close its copies of the lock, and the child's watch thread died, so
    that the worker outlived its parent and the lock, running beside the
    next holder."""
    program = start(
        script(
            tmp_path,
            f"""
            import os, resource, sys, threading, time
            import onlyone
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
            spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
            held = onlyone.Lock(sys.argv[1], dir={str(lock_dir)!r}).acquire()
            def fork():
                child = os.fork()
                if child == 0:
                    os.write(1, f"child {{os.getpid()}}\\n".encode())
                    time.sleep(120)
                    os._exit(0)
            worker = threading.Thread(target=fork)
            worker.start()
            worker.join()
            os.write(1, f"parent {{os.getpid()}}\\n".encode())
            time.sleep(120)
            """,
        ),
        name,
    )
    child = None
    try:
        lines = {}
        for _ in range(2):
            words = program.stdout.readline().split()
            lines[words[0]] = int(words[1])
        child = lines["child"]
        os.kill(lines["parent"], signal.SIGKILL)
        program.wait()
        assert wait_until(lambda: not alive(child), 10), (
            "the worker outlived its parent, the lock's holder"
        )
        child = None
        errors = program.stderr.read()
        assert "out of range" not in errors, errors
    finally:
        for pid in (child, program.pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        program.wait()


def test_children_forked_while_the_watcher_ticks_can_take_locks(tmp_path, lock_dir, name):
    """Finding 4: the one thread that watches every held file lock ticks
    them under its registry's mutex (and, since issue 15, keeps waking for
    a second after the last release). A fork at that moment copied the
    mutex locked into the child, where no thread would ever unlock it: the
    child's first acquisition hung for good. A holder of many locks (a
    long tick) forking workers that each take a lock of their own hit it
    about once in fifteen forks."""
    program = start(
        script(
            tmp_path,
            f"""
            import os, resource, signal, sys
            import onlyone
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))
            top = {str(lock_dir)!r}
            held = [onlyone.Lock(f"h{{i}}", dir=top).acquire() for i in range(1500)]
            hung = 0
            for i in range(150):
                pid = os.fork()
                if pid == 0:
                    signal.alarm(5)  # a hung child dies of SIGALRM
                    onlyone.Lock(f"c{{i}}", dir=top).acquire().release()
                    os._exit(0)
                _, status = os.waitpid(pid, 0)
                if os.WIFSIGNALED(status):
                    hung += 1
            print(hung)
            """,
        ),
        name,
    )
    out, err = program.communicate(timeout=600)
    assert program.returncode == 0, err
    assert out.strip() == "0", f"{out.strip()} of 150 children hung taking a lock"


def test_children_forked_while_another_thread_acquires_can_take_locks(
    tmp_path, lock_dir, name
):
    """Finding 4, the same hang through the acquire path's other
    process-wide mutexes: a thread takes and lets go of locks in twenty
    directories (more than the identities a process keeps, so that the
    mount table is looked at each time) while the main thread forks
    children that take a lock each. A fork while that thread held the
    mount table's mutex (or the kept identities', or the process
    identity's) hung the child's acquisition: about one fork in twelve.
    Then, with those held across forks, still one run in three or four:
    the first fork could land in the churning thread's first acquisition,
    which was installing the fork hooks themselves (see the next test)."""
    program = start(
        script(
            tmp_path,
            f"""
            import os, signal, sys, threading
            import onlyone
            top = {str(lock_dir)!r}
            paths = [os.path.join(top, f"d{{i}}") for i in range(20)]
            stop = False
            def churn():
                i = 0
                while not stop:
                    onlyone.Lock("churn", dir=paths[i % 20]).acquire().release()
                    i += 1
            threading.Thread(target=churn, daemon=True).start()
            hung = 0
            for i in range(200):
                pid = os.fork()
                if pid == 0:
                    signal.alarm(5)  # a hung child dies of SIGALRM
                    onlyone.Lock(f"c{{i}}", dir=top).acquire().release()
                    os._exit(0)
                _, status = os.waitpid(pid, 0)
                if os.WIFSIGNALED(status):
                    hung += 1
            stop = True
            print(hung)
            """,
        ),
        name,
    )
    out, err = program.communicate(timeout=600)
    assert program.returncode == 0, err
    assert out.strip() == "0", f"{out.strip()} of 200 children hung taking a lock"


def test_children_forked_during_another_threads_first_acquisition_can_take_locks(
    tmp_path, lock_dir, name
):
    """Finding 5: the at-fork hooks were installed by a process's first
    acquisition, in a std `Once`. A fork while another thread was inside
    it gave a child whose `Once` stayed "running" with no thread to finish
    it: the child's first acquisition waited in `install_fork_hooks`
    forever (its stack, under gdb). One chance per process, so each of 40
    fresh processes (forked before any acquisition) starts a thread that
    acquires for the first time and forks children until it is done, which
    each take a lock."""
    program = start(
        script(
            tmp_path,
            f"""
            import os, signal, threading
            import onlyone
            top = {str(lock_dir)!r}
            hung = 0
            for i in range(40):
                fresh = os.fork()
                if fresh == 0:
                    first = onlyone.Lock("first", dir=os.path.join(top, f"f{{i}}"))
                    thread = threading.Thread(target=lambda: first.acquire().release())
                    thread.start()
                    children = []
                    for j in range(64):  # all through the first acquisition
                        if not thread.is_alive():
                            break
                        pid = os.fork()
                        if pid == 0:
                            signal.alarm(5)  # a hung child dies of SIGALRM
                            onlyone.Lock(f"c{{i}}-{{j}}", dir=top).acquire().release()
                            os._exit(0)
                        children.append(pid)
                    thread.join()
                    bad = 0
                    for pid in children:
                        _, status = os.waitpid(pid, 0)
                        bad += os.WIFSIGNALED(status)
                    os._exit(bad)
                _, status = os.waitpid(fresh, 0)
                hung += os.WEXITSTATUS(status) if os.WIFEXITED(status) else 100
            print(hung)
            """,
        ),
        name,
    )
    out, err = program.communicate(timeout=600)
    assert program.returncode == 0, err
    assert out.strip() == "0", f"{out.strip()} children hung taking a lock"
