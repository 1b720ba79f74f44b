"""The Python row of benches/compare: onlyone's Python package beside
filelock and tendo.singleton, in one interpreter, round by round.

  python_peers.py DIR ROUNDS BATCH
      DIR is a private directory (0700) for onlyone's lock files; the
      peers' lock files go in DIR/peers. Prints one JSON object: for each
      contender ("onlyone", "filelock", "tendo"), the duration in ns of each
      acquire + release of an uncontended lock. A contender whose package is
      missing is left out, and named under "missing".
"""

import json
import os
import sys
import time


def main():
    directory, rounds, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    peers = os.path.join(directory, "peers")
    os.makedirs(peers, exist_ok=True)
    contenders = {}
    missing = []

    try:
        import onlyone

        lock = onlyone.Lock("python-row", dir=directory)

        def with_onlyone():
            lock.acquire(blocking=False).release()

        contenders["onlyone"] = with_onlyone
    except ImportError:
        missing.append("onlyone")

    try:
        from filelock import FileLock

        filelock = FileLock(os.path.join(peers, "filelock.lock"))

        def with_filelock():
            filelock.acquire()
            filelock.release()

        contenders["filelock"] = with_filelock
    except ImportError:
        missing.append("filelock")

    try:
        from tendo.singleton import SingleInstance

        tendo_path = os.path.join(peers, "tendo.lock")

        def with_tendo():
            instance = SingleInstance(lockfile=tendo_path)
            del instance  # its __del__ unlocks and removes the file

        contenders["tendo"] = with_tendo
    except ImportError:
        missing.append("tendo")

    clock = time.perf_counter_ns
    samples = {name: [] for name in contenders}
    names = list(contenders)
    for round in range(rounds):
        # Rotate the order so that none always runs first.
        for i in range(len(names)):
            name = names[(round + i) % len(names)]
            take = contenders[name]
            out = samples[name]
            for _ in range(batch):
                start = clock()
                take()
                out.append(clock() - start)
    samples["missing"] = missing
    print(json.dumps(samples))


if __name__ == "__main__":
    main()
