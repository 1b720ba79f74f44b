"""The lock on files: taking, conflicts, waiting, status, release."""

import gc
import os
import signal
import socket
import threading
import time

import pytest

import onlyone


def test_a_lock_taken_has_a_token_and_this_process_as_holder(lock_dir, name):
    with onlyone.Lock(name, dir=lock_dir) as held:
        assert held.token == 1
        assert held.name == name
        assert held.holder.pid == os.getpid()
        assert held.holder.host == socket.gethostname()
        assert held.holder.since is not None
        assert held.holder.command  # this process's command line
        assert not held.lost
    with onlyone.Lock(name, dir=lock_dir) as held:
        assert held.token == 2


def test_a_second_holder_gets_held_with_the_holder_line(lock_dir, name):
    lock = onlyone.Lock(name, dir=lock_dir, command=["python3", "bot.py"])
    with lock as first:
        with pytest.raises(onlyone.Held) as raised:
            with onlyone.Lock(name, dir=lock_dir):
                pass
        held = raised.value
        assert isinstance(held, TimeoutError)
        assert isinstance(held, onlyone.Error)
        assert held.exit_code == 75
        assert held.holder.pid == os.getpid()
        assert held.holder.token == first.token
        assert held.holder.command == ["python3", "bot.py"]
        assert str(held) == f"lock '{name}' is held by {held.holder}"
        assert str(held.holder).startswith(f"pid {os.getpid()} on ")
        assert onlyone.Lock(name, dir=lock_dir).try_acquire() is None
    guard = onlyone.Lock(name, dir=lock_dir).try_acquire()
    assert guard is not None
    guard.release()


def test_acquire_with_a_timeout_gives_up_after_it(lock_dir, name):
    with onlyone.Lock(name, dir=lock_dir):
        started = time.monotonic()
        with pytest.raises(onlyone.Held) as raised:
            onlyone.Lock(name, dir=lock_dir).acquire(timeout=0.5)
        waited = time.monotonic() - started
    assert 0.3 <= waited <= 0.7, waited
    assert str(raised.value).startswith(f"gave up after 500ms: lock '{name}' is held by pid ")


def test_acquire_without_blocking_tries_once(lock_dir, name):
    with onlyone.Lock(name, dir=lock_dir):
        started = time.monotonic()
        with pytest.raises(onlyone.Held):
            onlyone.Lock(name, dir=lock_dir).acquire(timeout=30, blocking=False)
        assert time.monotonic() - started < 0.2


def test_a_waiter_in_a_thread_wakes_within_50ms_of_the_release(lock_dir, name):
    holder = onlyone.Lock(name, dir=lock_dir).acquire()
    acquired = []
    waiting = threading.Event()

    def waiter():
        waiting.set()
        guard = onlyone.Lock(name, dir=lock_dir).acquire(timeout=10)
        acquired.append(time.monotonic())
        guard.release()

    thread = threading.Thread(target=waiter)
    thread.start()
    waiting.wait()
    time.sleep(0.3)  # let it wait in earnest, not in its first try
    released = time.monotonic()
    holder.release()
    thread.join(10)
    assert acquired, "the waiter never took the lock"
    assert acquired[0] - released < 0.05, acquired[0] - released


def test_ctrl_c_interrupts_a_wait_within_100ms(lock_dir, name):
    interrupted_at = []

    def interrupt():
        interrupted_at.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    with onlyone.Lock(name, dir=lock_dir):
        timer = threading.Timer(0.3, interrupt)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            onlyone.Lock(name, dir=lock_dir).acquire(timeout=10)
        raised_at = time.monotonic()
        timer.join()
    assert raised_at - interrupted_at[0] < 0.1, raised_at - interrupted_at[0]
    # The wait is over: nothing is left holding the lock.
    onlyone.Lock(name, dir=lock_dir).acquire(blocking=False).release()


def test_a_guard_is_released_when_collected(lock_dir, name):
    guard = onlyone.Lock(name, dir=lock_dir).acquire()
    assert onlyone.status(name, dir=lock_dir).held
    del guard
    gc.collect()
    assert not onlyone.status(name, dir=lock_dir).held


def test_release_twice_does_nothing(lock_dir, name):
    guard = onlyone.Lock(name, dir=lock_dir).acquire()
    guard.release()
    guard.release()
    assert guard.lost is False
    assert "not held" in repr(guard)


def test_status_says_who_holds_and_the_last_token(lock_dir, name):
    free = onlyone.status(name, dir=lock_dir)
    assert (free.held, free.holder, free.name) == (False, None, name)
    lock = onlyone.Lock(name, dir=lock_dir)
    with lock as held:
        status = lock.status()
        assert status.held
        assert status.holder.pid == os.getpid()
        assert status.last_token == held.token
        assert status.location == os.path.join(lock_dir, f"{name}.lock")
    assert onlyone.status(name, dir=lock_dir).last_token == held.token


def test_the_environment_names_the_lock_as_onlyone_run_does(lock_dir, name):
    with onlyone.Lock(name, dir=lock_dir) as held:
        env = held.env
    assert env["ONLYONE_NAME"] == name
    assert env["ONLYONE_TOKEN"] == str(held.token)


def test_onlyone_dir_is_the_default_directory(lock_dir, name, monkeypatch):
    monkeypatch.setenv("ONLYONE_DIR", lock_dir)
    with onlyone.Lock(name):
        assert onlyone.status(name, dir=lock_dir).held


def test_every_public_name_has_a_docstring():
    for public in onlyone.__all__:
        value = getattr(onlyone, public)
        if callable(value):
            assert value.__doc__, public
    package = os.path.dirname(onlyone.__file__)
    assert os.path.exists(os.path.join(package, "py.typed"))


def test_wait_lost_times_out_while_the_lock_is_held(lock_dir, name):
    with onlyone.Lock(name, dir=lock_dir) as held:
        started = time.monotonic()
        assert held.wait_lost(0.2) is False
        assert 0.15 <= time.monotonic() - started <= 0.5
        assert held.lost_reason is None


def test_an_unknown_loss_policy_is_a_value_error(lock_dir, name):
    with pytest.raises(ValueError, match="on_lost must be"):
        onlyone.Lock(name, dir=lock_dir, on_lost="ignore")
