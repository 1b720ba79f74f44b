# E12: Ctrl-C at a random moment around the grant of a wait. After the
# KeyboardInterrupt is handled (the program goes on, without a guard), is
# the lock still held by this process? LEAK if so, 300 ms later.
import os, sys, time, random, signal, subprocess, tempfile, threading, onlyone
ONLYONE = os.environ.get("ONLYONE") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../target/debug/onlyone")
where = sys.argv[1] if len(sys.argv) > 1 else None
runs = int(os.environ.get("RUNS", "20"))
leaks = 0
for i in range(runs):
    name = f"e12-{os.getpid()}-{i}"
    kw = {"postgres": where} if where else {"dir": tempfile.mkdtemp()}
    args = ["--postgres", where] if where else ["--dir", kw["dir"]]
    holder = subprocess.Popen([ONLYONE, "run", *args, "--name", name, "--", "sleep", "0.4"])
    while not onlyone.status(name, **kw).held:
        time.sleep(0.01)
    delay = random.uniform(0.2, 0.8)
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT)); timer.start()
    outcome = "?"
    try:
        held = onlyone.Lock(name, **kw).acquire(timeout=5)
        outcome = "got"
        time.sleep(1.5)
        outcome = "BUG-no-interrupt"
    except KeyboardInterrupt:
        outcome = outcome + "+interrupted"
    held = None
    timer.join()
    time.sleep(0.3)
    st = onlyone.status(name, **kw)
    mine = st.held and st.holder and (os.getpid() in (st.holder.pids or []) or st.holder.pid == os.getpid())
    if mine:
        leaks += 1
    print(f"{i}: delay {delay:.2f} {outcome}: afterwards held={st.held} by-me={mine}", flush=True)
    holder.wait()
print("LEAKS:", leaks)
