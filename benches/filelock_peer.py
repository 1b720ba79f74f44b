"""Python filelock, the peer that benches/compare measures onlyone against.

  filelock_peer.py acquire PATH N   acquire + release N times; print each
                                    one's duration in ns on one line
  filelock_peer.py hold PATH        hold the lock; print "ready PID"; on a
                                    line from stdin print CLOCK_MONOTONIC ns
                                    and release
  filelock_peer.py wait PATH        print "waiting"; block in acquire() (it
                                    polls every 50 ms); print CLOCK_MONOTONIC
                                    ns once acquired
"""

import os
import sys
import time

from filelock import FileLock


def main():
    mode, path = sys.argv[1], sys.argv[2]
    lock = FileLock(path)
    if mode == "acquire":
        n = int(sys.argv[3])
        clock = time.perf_counter_ns
        samples = []
        for _ in range(n):
            start = clock()
            lock.acquire()
            lock.release()
            samples.append(clock() - start)
        print(" ".join(map(str, samples)), flush=True)
    elif mode == "hold":
        lock.acquire()
        print("ready", os.getpid(), flush=True)
        sys.stdin.readline()
        print(time.monotonic_ns(), flush=True)
        lock.release()
    elif mode == "wait":
        print("waiting", flush=True)
        lock.acquire()
        print(time.monotonic_ns(), flush=True)
        lock.release()
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
