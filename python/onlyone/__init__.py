"""Exactly one instance of a program.

On one machine a kernel file lock (flock) decides, released by the kernel
when its holder dies; across machines a PostgreSQL session-level advisory
lock or a MySQL/MariaDB named lock (``GET_LOCK``). The locks are those of the ``onlyone`` command and the Rust library:
a Python program, the command and a Rust program exclude one another on the
same name.

    import onlyone

    onlyone.single_instance("trading-bot")   # or exit 75, naming the holder

    lock = onlyone.Lock("nightly-report")
    with lock as held:                       # raises onlyone.Held if taken
        print("fencing token", held.token)

Whether a lock is held is decided only by the kernel or the database server,
never by a process id written in a file.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import dataclasses
import datetime
import os
import select
import signal
import sys
import threading
import weakref
from typing import Any, Callable, Dict, Generator, List, Optional, Tuple, Union

from . import _onlyone
from ._errors import Error, Held, Lost, Refused, Unusable, UsageError

__all__ = [
    "Error",
    "Guard",
    "Held",
    "Holder",
    "Lock",
    "Lost",
    "NAME_RULE",
    "Refused",
    "Status",
    "Unusable",
    "UsageError",
    "single_instance",
    "status",
]

#: What a lock name may be.
NAME_RULE: str = _onlyone.NAME_RULE

#: What to do when a held lock is lost: "exit", "raise", or a callable
#: given the reason.
OnLost = Union[str, Callable[[str], Any]]

PathLike = Union[str, "os.PathLike[str]"]


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock, as far as can be told without taking it.

    ``str(holder)`` is the line the command prints, such as
    ``pid 17656 on host1 since 2025-10-18T14:43:00Z (3m ago): python3 bot.py``.
    The record's fields are None when no record could be read.
    """

    #: The holder's process id (the supervisor's, for ``onlyone run``).
    pid: Optional[int]
    #: The holder's host name.
    host: Optional[str]
    #: The holder's login name.
    user: Optional[str]
    #: When the lock was taken (UTC).
    since: Optional[datetime.datetime]
    #: The command that runs under the lock, as recorded.
    command: List[str]
    #: The fencing token of that acquisition.
    token: Optional[int]
    #: PostgreSQL: the server process of the holder's session (what
    #: ``pg_terminate_backend`` takes); MySQL: its connection id (what
    #: ``KILL CONNECTION`` takes).
    server_pid: Optional[int]
    #: The local processes holding the lock, as the kernel names them.
    pids: List[int]
    #: Anything else the backend can tell (the session's client address).
    detail: Optional[str]
    text: str = dataclasses.field(repr=False)

    def __str__(self) -> str:
        return self.text


@dataclasses.dataclass(frozen=True)
class Status:
    """Whether a lock is held, by whom, and who waits for it."""

    #: The lock's name.
    name: str
    #: Where it lives: a lock file's path, or the server and key (MySQL:
    #: the name given to ``GET_LOCK``).
    location: str
    #: Whether it is held now.
    held: bool
    #: Who holds it, when held.
    holder: Optional[Holder]
    #: The last fencing token handed out, when known.
    last_token: Optional[int]
    #: Processes or sessions waiting for it, when the backend can see them.
    waiters: List[str]


class Guard:
    """A held lock, until :meth:`release` (also when the :class:`Lock` that
    handed it out is collected, and at interpreter exit). A context manager:
    ``with lock.acquire() as held:``.
    """

    __slots__ = ("_native", "_holder", "_where", "_thread", "__weakref__")

    def __init__(
        self, native: _onlyone.NativeGuard, where: Tuple[str, str, str]
    ) -> None:
        self._native = native
        self._holder: Optional[Holder] = None
        # Which lock (backend, location, name), and the thread that took
        # it: a wait by that thread for that lock would wait for itself.
        self._where = where
        self._thread = threading.get_ident()

    @property
    def name(self) -> str:
        """The name of the lock held."""
        return self._native.name

    @property
    def token(self) -> Optional[int]:
        """The fencing token: larger than every token handed out before for
        this lock. Write it with the work it protects, so that storage can
        refuse an older holder's late writes. None only when a lock file's
        record could not be written (logged as a warning). On PostgreSQL
        and MySQL it is committed to the state table before the lock is
        handed out."""
        return self._native.token

    @property
    def fence_sql(self) -> Optional[str]:
        """On PostgreSQL, ``SELECT schema.onlyone_fence('NAME'::text, TOKEN::bigint)``:
        run it first in a transaction on the lock's database, and the
        transaction fails with SQLSTATE ON001 unless this acquisition still
        holds the lock (the command gets it as ONLYONE_FENCE). On MySQL
        and MariaDB, ``SELECT `db`.onlyone_fence('NAME', TOKEN)``, the
        same, run first after START TRANSACTION (SQLSTATE ON001, error
        1644, when stale). None on lock files; with an explicit key on
        PostgreSQL, a statement that always raises ON001."""
        return self._native.fence_sql

    @property
    def holder(self) -> Holder:
        """This holder's record, as others see it."""
        if self._holder is None:
            self._holder = _holder_of_record(self._native.record)
        return self._holder

    @property
    def lost(self) -> bool:
        """True once the lock is lost (or, in a child made by fork, was
        never this process's)."""
        return self._native.lost is not None

    @property
    def lost_reason(self) -> Optional[str]:
        """Why the lock was lost, or None while it is held."""
        return self._native.lost

    @property
    def stop_requested(self) -> Optional[str]:
        """Who asked this holder to stop (``HOST:PID``), or None. On
        PostgreSQL ``onlyone stop`` and ``--replace`` ask the holder before
        they end its session: the lock is still held, and the holder should
        finish and release it (a clean release: no lock-delay for the next)
        before the stopper's bound (``stop --timeout``; ``--replace``: its
        heartbeat deadline + kill grace + 1 s), else its session is ended
        and the lock lost. On MySQL ``stop`` ends the session at once:
        always None there, and the guard reports the loss."""
        return self._native.stop_requested

    @property
    def env(self) -> Dict[str, str]:
        """The variables ``onlyone run`` gives its command for this lock
        (ONLYONE_NAME, ONLYONE_TOKEN, ONLYONE_LOCK, ...), for a child
        process."""
        return dict(self._native.env)

    def wait_lost(self, timeout: Optional[float] = None) -> bool:
        """Waits at most ``timeout`` seconds (None: without limit) for the
        lock to be lost; True if it was. Ctrl-C interrupts the wait."""
        return self._native.wait_lost(timeout) is not None

    def release(self) -> None:
        """Releases the lock now. Releasing twice does nothing.

        Raises :class:`Error` when a clean release failed; the lock is
        released all the same when the process exits or its session ends.
        """
        _live.discard(self)
        self._native.release()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> Guard:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await _release_off_loop(self)

    def __repr__(self) -> str:
        state = "held" if self._native.holding else "not held"
        return f"<onlyone.Guard {self.name!r} token={self.token} {state}>"


class Lock:
    """The lock ``name``: lock files in ``dir`` (default: ``ONLYONE_DIR``, else
    a private per-user directory), or with ``postgres`` (a URL or
    ``key=value`` string; default ``ONLYONE_POSTGRES_URL``) a PostgreSQL
    advisory lock, at the advisory ``key`` derived from the name unless one
    is given, with fencing tokens in the state ``table``
    (default ``public.onlyone_locks``), or with ``mysql``
    (``mysql://user@host:port/database``, the password in ``MYSQL_PWD`` or
    ``~/.my.cnf``; default ``ONLYONE_MYSQL_URL``) a MySQL/MariaDB named
    lock, whose name in the server is derived from ``name`` and the
    database (:attr:`location` shows it), with its state table
    ``onlyone_locks`` in that database (``key`` and ``table`` are refused
    there). Give at most one of ``dir``, ``postgres`` and ``mysql``; with
    none, at most one of the two URL variables may be set.

    ``with lock as held:`` tries once and raises :class:`Held` when another
    holder has the lock; :meth:`acquire` waits; :meth:`try_acquire` returns
    None instead of raising; ``async with lock.acquire_async(timeout=30)``
    waits without blocking the event loop.

    ``on_lost`` says what happens when a held lock is lost (a database
    session ended by the server or the network; a lock file that cannot be
    restored). A database holder checks its session every ``heartbeat``
    seconds (default 1) and considers the lock lost when no check has
    succeeded for T = 2 x heartbeat + 1 s; a successor waits T + 5 s + 2 s
    (the lock-delay) after an unclean loss before it starts.

    - ``"exit"`` (default): say why on stderr, as the command does, stop
      the process's descendants (SIGTERM, SIGKILL 5 s later; Linux) and end
      the process with status 74 (``os._exit``: no cleanup runs, so
      nothing of the work runs after the loss);
    - ``"raise"``: raise :class:`Lost` in the main thread, at its next
      Python instruction (a blocking call in C is not interrupted); if the
      guard is still not released 5 s after the loss (the exception was
      swallowed), end as ``"exit"`` does, children killed at once;
    - a callable: called with the reason, in a thread of its own.

    On Linux, children forked while a lock is held are killed when the
    thread that forked them ends (with the process, say), so that no worker
    outlives the lock; see the README for what this does not cover.

    ``command`` is recorded as what the holder runs (default: this
    process's command line), for others to see.

    The Lock keeps the guards it hands out: ``lock.acquire()`` without
    keeping the guard holds the lock until :meth:`release`, until the Lock
    is collected, or until the process exits (as ``filelock`` and
    ``threading.Lock`` users expect).
    """

    def __init__(
        self,
        name: str,
        dir: Optional[PathLike] = None,
        postgres: Optional[str] = None,
        key: Optional[int] = None,
        table: Optional[str] = None,
        *,
        on_lost: OnLost = "exit",
        heartbeat: Optional[float] = None,
        command: Optional[List[str]] = None,
        mysql: Optional[str] = None,
    ) -> None:
        if not (on_lost in ("exit", "raise") or callable(on_lost)):
            raise ValueError(
                f'on_lost must be "exit", "raise" or a callable, not {on_lost!r}'
            )
        if command is None:
            command = _own_command()
        self._native = _onlyone.NativeLock(
            name,
            os.fspath(dir) if dir is not None else None,
            postgres,
            key,
            table,
            heartbeat,
            command,
            mysql,
        )
        self._on_lost = on_lost
        # The guards handed out, kept so that one not kept by the caller
        # still holds the lock (pruned of released ones at each take).
        self._guards: List[Guard] = []

    @property
    def name(self) -> str:
        """The lock's name."""
        return self._native.name

    @property
    def location(self) -> str:
        """Where the lock lives: the lock directory, or the server and key
        (MySQL: and the name given to ``GET_LOCK``)."""
        return self._native.location

    def try_acquire(self) -> Optional[Guard]:
        """One try, never waiting: the guard, or None when another holder
        has the lock.

        Raises :class:`Unusable` or :class:`Refused` when the lock cannot
        be used.
        """
        native, _ = self._try_once()
        return None if native is None else self._guard(native)

    def acquire(self, timeout: Optional[float] = None, blocking: bool = True) -> Guard:
        """Takes the lock, waiting at most ``timeout`` seconds (None: without
        limit); ``blocking=False`` tries once. The wait lets other threads
        run and is interrupted by Ctrl-C (KeyboardInterrupt).

        Raises :class:`Held` (a ``TimeoutError``) when another holder still
        has the lock, with the holder in ``.holder``.
        """
        _check_timeout(timeout)
        if not blocking or timeout == 0:
            native, holder = self._try_once()
            return self._taken(native, holder)
        if timeout is None:
            self._refuse_waiting_for_itself()
        if not self._native.database:
            # The common case first, without a thread.
            native, holder = self._native.try_acquire(None)
            if native is not None:
                return self._guard(native)
        return self._taken(*_waited(self._native.start_wait(timeout, timeout)))

    def acquire_async(self, timeout: Optional[float] = None) -> "_AsyncAcquire":
        """As :meth:`acquire`, for asyncio: ``await lock.acquire_async(5)``
        or ``async with lock.acquire_async(timeout=5) as held:``. The wait
        runs in the loop's executor; cancelling the task stops it (a
        PostgreSQL wait is ended in the server; a MySQL wait within 1 s,
        and what it took by then is released at once)."""
        _check_timeout(timeout)
        return _AsyncAcquire(self, timeout, True)

    def status(self) -> Status:
        """Whether the lock is held, by whom, and who waits, without taking
        it."""
        return _status_of(self._native.status())

    def release(self) -> None:
        """Releases what this Lock holds: the guards it handed out that
        are still held. Nothing when it holds nothing."""
        for guard in self._guards:
            guard.release()
        self._guards = []

    # `with lock:` in several threads or tasks at once: each block ends
    # the guard it entered, found in its own thread's or task's context.
    def __enter__(self) -> Guard:
        guard = self.acquire(blocking=False)
        _push_entered(self, guard)
        return guard

    def __exit__(self, *exc: object) -> None:
        _pop_entered(self).release()

    async def __aenter__(self) -> Guard:
        guard = await _AsyncAcquire(self, None, False)
        _push_entered(self, guard)
        return guard

    async def __aexit__(self, *exc: object) -> None:
        await _release_off_loop(_pop_entered(self))

    def __repr__(self) -> str:
        return f"<onlyone.Lock {self.name!r} in {self.location}>"

    def _taken(
        self, native: Optional[_onlyone.NativeGuard], holder: Optional[Dict[str, Any]]
    ) -> Guard:
        if native is not None:
            return self._guard(native)
        assert holder is not None
        raise Held(holder["message"], _holder_of(holder))

    def _guard(self, native: _onlyone.NativeGuard) -> Guard:
        on_lost = self._on_lost
        if on_lost == "exit":
            native.exit_on_loss(_onlyone.KILL_GRACE)
        elif on_lost == "raise":
            native.raise_on_loss(_raiser(self.name), _onlyone.KILL_GRACE)
        else:
            native.on_loss(on_lost)
        guard = Guard(native, self._where())
        _live.add(guard)
        self._guards = [kept for kept in self._guards if kept._native.holding]
        self._guards.append(guard)
        return guard

    def _try_once(
        self,
    ) -> Tuple[Optional[_onlyone.NativeGuard], Optional[Dict[str, Any]]]:
        if not self._native.database:
            return self._native.try_acquire(None)
        # A database try may sit out a lock-delay (10 s): in a thread of
        # its own, so that Ctrl-C ends it at once.
        return _waited(self._native.start_wait(None, None, True))

    def _where(self) -> Tuple[str, str, str]:
        return (self._native.backend, self._native.location, self.name)

    def _refuse_waiting_for_itself(self) -> None:
        where, thread = self._where(), threading.get_ident()
        for guard in list(_live):
            if guard._where == where and guard._thread == thread and guard._native.holding:
                pid = os.getpid()
                raise Held(
                    f"lock '{self.name}' is held by this process (pid {pid}), "
                    "taken in this very thread: waiting for it without a "
                    "timeout would wait forever",
                    guard.holder,
                )


def _waited(
    waiter: _onlyone.Waiter,
) -> Tuple[Optional[_onlyone.NativeGuard], Optional[Dict[str, Any]]]:
    """The outcome of a wait in its own thread; Ctrl-C cancels it."""
    try:
        waiter.wait(None)
    except BaseException:
        waiter.cancel()
        raise
    return waiter.result()


class _AsyncAcquire:
    """What :meth:`Lock.acquire_async` returns: awaitable, and an async
    context manager that releases on exit."""

    def __init__(self, lock: Lock, timeout: Optional[float], wait: bool) -> None:
        self._lock = lock
        self._timeout = timeout
        self._wait = wait
        self._guard: Optional[Guard] = None

    def __await__(self) -> Generator[Any, None, Guard]:
        return self._acquire().__await__()

    async def __aenter__(self) -> Guard:
        self._guard = await self._acquire()
        return self._guard

    async def __aexit__(self, *exc: object) -> None:
        if self._guard is not None:
            await _release_off_loop(self._guard)

    async def _acquire(self) -> Guard:
        lock = self._lock
        native = lock._native
        if not native.database:
            # A try on files takes microseconds: no thread for it.
            guard, holder = native.try_acquire(None)
            if guard is not None or not self._wait or self._timeout == 0:
                return lock._taken(guard, holder)
        timeout = self._timeout if self._wait else 0.0
        waiter = native.start_wait(timeout)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, waiter.wait, None)
        except BaseException:
            waiter.cancel()
            raise
        guard, holder = waiter.result()
        if guard is None and holder is not None and not self._wait:
            # One try: the command's message names no wait.
            holder["message"] = f"lock '{lock.name}' is held by {holder['text']}"
        return lock._taken(guard, holder)


def single_instance(
    name: str,
    dir: Optional[PathLike] = None,
    postgres: Optional[str] = None,
    key: Optional[int] = None,
    table: Optional[str] = None,
    *,
    on_lost: OnLost = "exit",
    mysql: Optional[str] = None,
) -> Guard:
    """Takes the lock ``name`` for the rest of this process, or exits.

    On conflict, prints the holder line on stderr as the command does
    (``onlyone: lock 'bot' is held by pid 17656 on host1 since ...``) and
    exits with status 75; when the lock cannot be used, prints the error as
    the command does (``onlyone: error: ...``) and exits with the command's
    status (64 usage, 69 unusable, 77 refused). The lock is held until the
    process exits (or its guard, returned, is released). The arguments are
    :class:`Lock`'s.
    """
    try:
        lock = Lock(name, dir, postgres, key, table, on_lost=on_lost, mysql=mysql)
        guard = lock.acquire(blocking=False)
    except Held as held:
        print(f"onlyone: {held}", file=sys.stderr, flush=True)
        sys.exit(Held.exit_code)
    except Error as err:
        print(f"onlyone: error: {err}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)
    _kept.append(guard)
    return guard


def status(
    name: str,
    dir: Optional[PathLike] = None,
    postgres: Optional[str] = None,
    key: Optional[int] = None,
    table: Optional[str] = None,
    *,
    mysql: Optional[str] = None,
) -> Status:
    """Whether the lock ``name`` is held, by whom, and who waits, without
    taking it. The arguments are :class:`Lock`'s."""
    return _status_of(
        _onlyone.status(
            name,
            os.fspath(dir) if dir is not None else None,
            postgres,
            key,
            table,
            mysql,
        )
    )


# The guards entered by `with lock:` in this thread or task, innermost
# last: (lock, guard) pairs. A tuple, never changed in place, so that a task
# or thread that copies the context changes only its own.
_entered: "contextvars.ContextVar[Tuple[Tuple[Lock, Guard], ...]]" = (
    contextvars.ContextVar("onlyone_entered", default=())
)


def _push_entered(lock: Lock, guard: Guard) -> None:
    _entered.set(_entered.get() + ((lock, guard),))


def _pop_entered(lock: Lock) -> Guard:
    entered = _entered.get()
    for index in range(len(entered) - 1, -1, -1):
        if entered[index][0] is lock:
            _entered.set(entered[:index] + entered[index + 1 :])
            return entered[index][1]
    raise RuntimeError(f"{lock!r} was not entered in this thread or task")


# Guards held now: released at exit, and let go of in a child made by fork.
_live: "weakref.WeakSet[Guard]" = weakref.WeakSet()
# The guards of single_instance, kept for the life of the process.
_kept: List[Guard] = []


def _release_all() -> None:
    for guard in list(_live):
        try:
            guard.release()
        except Error as err:
            print(f"onlyone: warning: {err}", file=sys.stderr)


# A fork under way: the pid of the process that forks, and a pipe whose
# ends the child closes once it has closed its copies of the lock's
# descriptors. One fork at a time while locks are held: a fork by another
# thread would copy the pipe into a child that never closes it, keeping
# this fork's parent waiting.
_forking_pid = 0
_fork_pipe: Optional[Tuple[int, int]] = None
# Re-entrant: a signal handler may fork while this thread waits in a
# fork's parent hook (a plain lock would hang it for good).
_fork_lock = threading.RLock()
# Whether the fork under way comes from the main thread: the kernel's
# parent-death signal follows the forking thread, not the process.
_forking_from_main = True
# Whether this process is the child of a holder: its own children then die
# with it too.
_under_lock = False


def _before_fork() -> None:
    global _forking_pid, _fork_pipe, _forking_from_main
    if not _live:
        return
    _fork_lock.acquire()  # released by _after_fork_in_parent
    _forking_pid = os.getpid()
    _forking_from_main = threading.current_thread() is threading.main_thread()
    try:
        for guard in list(_live):
            guard._native.before_fork()
        _fork_pipe = os.pipe()
    except BaseException:
        _fork_lock.release()
        raise


def _after_fork_in_parent() -> None:
    # Until the child has closed its copies, it holds the lock too: a
    # release right after the fork would free nothing. Wait for it (its
    # end of the pipe closes, or it ends).
    global _fork_pipe
    pipe, _fork_pipe = _fork_pipe, None
    if pipe is None:
        return
    readable, writable = pipe
    os.close(writable)
    try:
        _wait_readable(readable, _FORK_WAIT)
    finally:
        os.close(readable)
        _fork_lock.release()


def _after_fork_in_child() -> None:
    # The child must neither keep the parent's locks alive (it closes its
    # copies of their descriptors) nor release them (it never unlocks),
    # nor outlive the lock: it is killed when its parent ends (Linux).
    global _under_lock, _fork_pipe, _fork_lock
    for guard in list(_live):
        _under_lock = _under_lock or guard._native.holding
        guard._native.forget_in_child()
    _live.clear()
    if _fork_pipe is not None:
        for end in _fork_pipe:
            os.close(end)
        _fork_pipe = None
    _fork_lock = threading.RLock()
    if _under_lock:
        if _forking_from_main:
            _onlyone.die_with_parent(_forking_pid)
        else:
            _die_with_process(_forking_pid)


def _wait_readable(fd: int, timeout: Optional[float]) -> None:
    # poll, not select: select refuses a descriptor numbered 1024 or more,
    # which a process with many files or locks open gets.
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll(None if timeout is None else timeout * 1000)


def _die_with_process(parent: int) -> None:
    # Forked by a thread that may end long before its process: the parent-
    # death signal would kill this worker then. Watch the parent process
    # itself (a pidfd, Linux) from a thread of this child instead.
    if not hasattr(os, "pidfd_open"):
        return
    try:
        watched = os.pidfd_open(parent)
    except OSError:
        os.kill(os.getpid(), signal.SIGKILL)  # ended before we looked
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        _wait_readable(watched, None)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="onlyone-parent-watch", daemon=True).start()


# How long a parent waits for its child to let go of the lock's
# descriptors: the child does it first thing, unless another at-fork hook
# hangs it.
_FORK_WAIT = 5.0

atexit.register(_release_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


async def _release_off_loop(guard: Guard) -> None:
    if guard._native.database:
        # Unlocking speaks to the server: not on the loop's thread.
        await asyncio.get_running_loop().run_in_executor(None, guard.release)
    else:
        guard.release()


def _check_timeout(timeout: Optional[float]) -> None:
    if timeout is not None and not timeout >= 0:
        raise ValueError(
            f"timeout is a number of seconds, 0 or more, or None; not {timeout!r}"
        )


def _own_command() -> List[str]:
    argv = getattr(sys, "orig_argv", None)
    if not argv:
        argv = [sys.executable or "python", *sys.argv]
    # An argument that is not UTF-8 (a Latin-1 file name) arrives with
    # surrogate escapes; the record is text, written lossily as the
    # command writes it.
    return [
        os.fsencode(word).decode("utf-8", "replace")
        for word in [os.path.basename(argv[0]), *argv[1:]]
    ]


def _raiser(name: str) -> Callable[[str], None]:
    main = threading.main_thread().ident or 0

    def raise_in_main_thread(reason: str) -> None:
        import ctypes

        message = f"lost lock '{name}' ({reason})"
        # The interpreter raises a class with no arguments: one that
        # carries this message.
        lost = type("Lost", (Lost,), {"__init__": lambda self: Lost.__init__(self, message)})
        lost.__module__ = "onlyone"
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(main), ctypes.py_object(lost)
        )

    return raise_in_main_thread


def _since(text: str) -> Optional[datetime.datetime]:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _holder_of_record(record: Dict[str, Any]) -> Holder:
    return Holder(
        pid=record["pid"],
        host=record["host"],
        user=record["user"],
        since=_since(record["acquired_at"]),
        command=record["command"],
        token=record["token"],
        server_pid=None,
        pids=[record["pid"]],
        detail=None,
        text=record["text"],
    )


def _holder_of(holder: Dict[str, Any]) -> Holder:
    record = holder["record"] or {}
    return Holder(
        pid=record.get("pid"),
        host=record.get("host"),
        user=record.get("user"),
        since=_since(record["acquired_at"]) if record else None,
        command=record.get("command", []),
        token=record.get("token"),
        server_pid=holder["server_pid"],
        pids=holder["pids"],
        detail=holder["detail"],
        text=holder["text"],
    )


def _status_of(status: Dict[str, Any]) -> Status:
    holder = status["holder"]
    return Status(
        name=status["name"],
        location=status["location"],
        held=status["held"],
        holder=None if holder is None else _holder_of(holder),
        last_token=status["last_token"],
        waiters=status["waiters"],
    )
