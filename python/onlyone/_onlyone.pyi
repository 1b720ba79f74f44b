"""The native module: the library's locks and the command. Private; use
the names of the ``onlyone`` package."""

from typing import Any, Dict, List, Optional, Tuple

Values = Dict[str, Any]

NAME_RULE: str

def main(argv: List[str]) -> int: ...
def die_with_parent(parent: int) -> None: ...

KILL_GRACE: float
def status(
    name: str,
    dir: Optional[str] = None,
    postgres: Optional[str] = None,
    key: Optional[int] = None,
    table: Optional[str] = None,
    mysql: Optional[str] = None,
) -> Values: ...

class NativeGuard:
    token: Optional[int]
    fence_sql: Optional[str]
    name: str
    database: bool
    stop_requested: Optional[str]
    record: Values
    env: List[Tuple[str, str]]
    holding: bool
    lost: Optional[str]
    def wait_lost(self, timeout: Optional[float] = None) -> Optional[str]: ...
    def release(self) -> None: ...
    def exit_on_loss(self, grace: float) -> None: ...
    def raise_on_loss(self, raise_lost: object, grace: float) -> None: ...
    def on_loss(self, callback: object) -> None: ...
    def before_fork(self) -> None: ...
    def forget_in_child(self) -> None: ...

class Waiter:
    def wait(self, timeout: Optional[float] = None) -> bool: ...
    def result(self) -> Tuple[Optional[NativeGuard], Optional[Values]]: ...
    def cancel(self) -> None: ...

class NativeLock:
    name: str
    database: bool
    backend: str
    location: str
    def __init__(
        self,
        name: str,
        dir: Optional[str] = None,
        postgres: Optional[str] = None,
        key: Optional[int] = None,
        table: Optional[str] = None,
        heartbeat: Optional[float] = None,
        command: List[str] = ...,
        mysql: Optional[str] = None,
    ) -> None: ...
    def try_acquire(
        self, within: Optional[float] = None
    ) -> Tuple[Optional[NativeGuard], Optional[Values]]: ...
    def start_wait(
        self, timeout: Optional[float], said: Optional[float] = None, once: bool = False
    ) -> Waiter: ...
    def status(self) -> Values: ...
