# bot_workers.py NAME WHERE WITNESS LOG MODE
# An "instance" = this parent (holding the lock through onlyone) plus one
# multiprocessing worker doing the protected work. The worker holds a
# non-blocking flock on WITNESS for as long as it works; OVERLAP if it can't.
# MODE: "forever" (worker loops, parent sleeps), "exit" (parent returns after
# starting a 4 s non-daemon worker).
import multiprocessing
import fcntl, os, sys, time
import onlyone

name, where, witness, log, mode = sys.argv[1:6]
method = os.environ.get("START", "fork")

def say(s):
    with open(log, "a") as f:
        f.write(f"{time.time():.3f} {os.getpid()} {s}\n")

def work(seconds):
    fd = os.open(witness, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        say("WORKER-ENTER")
    except BlockingIOError:
        say("OVERLAP")
        return
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    say("WORKER-EXIT")

if __name__ == "__main__":
    kw = {"postgres": where} if where.startswith("postgres") else {"dir": where}
    if os.environ.get("HB"):
        kw["heartbeat"] = float(os.environ["HB"])
    if os.environ.get("HB"):
        g = onlyone.Lock(name, **kw).acquire(blocking=False); held_guard = g
    else:
        g = onlyone.single_instance(name, **kw)
    say(f"PARENT-HOLDS token={g.token}")
    ctx = multiprocessing.get_context(method)
    seconds = 4 if mode == "exit" else 3600
    p = ctx.Process(target=work, args=(seconds,))
    p.start()
    print("started", flush=True)
    if mode == "exit":
        say("PARENT-MAIN-RETURNS")
        sys.exit(0)
    while True:
        time.sleep(1)
