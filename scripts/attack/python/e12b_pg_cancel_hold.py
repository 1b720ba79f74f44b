# E12b: after Ctrl-C ends a PostgreSQL wait, how long does this process go on
# holding the lock once the old holder leaves? (The README: "lets go at once".)
import os, sys, time, signal, subprocess, threading, onlyone
ONLYONE = os.environ.get("ONLYONE") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../target/debug/onlyone")
url = sys.argv[1]
for i in range(int(os.environ.get("RUNS", "4"))):
    name = f"e12b-{os.getpid()}-{i}"
    holder = subprocess.Popen([ONLYONE, "run", "--postgres", url, "--name", name, "--", "sleep", "1"])
    while not onlyone.status(name, postgres=url).held:
        time.sleep(0.01)
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        onlyone.Lock(name, postgres=url).acquire(timeout=30)
    except KeyboardInterrupt:
        pass
    holder.wait()
    freed = time.monotonic()
    first_mine = None
    while time.monotonic() - freed < 40:
        st = onlyone.status(name, postgres=url)
        mine = st.held and st.holder.pid == os.getpid()
        if mine and first_mine is None:
            first_mine = time.monotonic()
        if first_mine and not st.held:
            break
        time.sleep(0.02)
    end = time.monotonic()
    print(f"{i}: the old holder left; this process (interrupted) held the lock from +{(first_mine or end)-freed:.2f}s to +{end-freed:.2f}s; last token {st.last_token}", flush=True)
