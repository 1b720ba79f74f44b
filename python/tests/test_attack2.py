"""The second adversarial pass on the Python package (branch a13b): each
test is a finding that failed on the code under attack (strict xfail
there) and passes since its fix. Reproductions by hand: scripts/attack/python/ (its
README names the script of each finding)."""

import os
import select
import subprocess
import sys

import pytest

from conftest import script


def test_fork_from_signal_handler_during_a_fork_does_not_hang(tmp_path):
    prog = script(
        tmp_path,
        """
        import os, signal, sys, time
        # Registered before onlyone's hook, it runs first in the child and
        # keeps the child from closing the lock's descriptors for 1 s.
        os.register_at_fork(after_in_child=lambda: time.sleep(1))
        import onlyone
        held = onlyone.Lock("sig", sys.argv[1]).acquire()
        def on_alarm(*_):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        print("ok", flush=True)
        """,
    )
    try:
        done = subprocess.run(
            [sys.executable, prog, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the program hung in fork from its signal handler")
    assert done.stdout == "ok\n", done.stderr


def test_worker_forked_by_an_ended_thread_lives_while_the_holder_does(tmp_path):
    prog = script(
        tmp_path,
        """
        import os, sys, threading
        import onlyone
        held = onlyone.Lock("thread", sys.argv[1]).acquire()
        r, w = os.pipe()
        pids = []
        def spawn():
            pid = os.fork()
            if pid == 0:
                os.close(r)
                os.read(0, 1)  # until the test closes our stdin
                os.write(w, b"done")
                os._exit(0)
            pids.append(pid)
        t = threading.Thread(target=spawn)
        t.start()
        t.join()
        os.close(w)
        print("forked", flush=True)
        _, status = os.waitpid(pids[0], 0)
        print("finished" if os.read(r, 10) else
              f"killed {os.waitstatus_to_exitcode(status)}", flush=True)
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, prog, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "forked\n"
    out, _ = proc.communicate(input="", timeout=10)  # closes its stdin
    assert out == "finished\n"


def test_worker_forked_by_an_ended_thread_dies_with_the_holder(tmp_path):
    """The other half of the fix above: such a worker still ends when its
    holder is killed (a pidfd watch instead of the parent-death signal)."""
    prog = script(
        tmp_path,
        """
        import os, sys, threading
        import onlyone
        held = onlyone.Lock("thread-dies", sys.argv[1]).acquire()
        def spawn():
            pid = os.fork()
            if pid == 0:
                os.read(0, 1)  # waits; only a signal ends it
                os._exit(0)
            print(pid, flush=True)
        t = threading.Thread(target=spawn)
        t.start()
        t.join()
        os.read(0, 1)
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, prog, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    worker = int(proc.stdout.readline())
    watch = os.pidfd_open(worker)
    proc.kill()
    proc.wait()
    readable, _, _ = select.select([watch], [], [], 10)
    assert readable, "the worker outlived its holder by 10 s"
