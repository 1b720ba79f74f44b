# E5: a worker is forked while the parent waits for the lock (an asyncio bot
# that awaits acquire_async and starts its worker pool meanwhile). After the
# parent gets the lock and releases it (or dies), does the worker keep it?
import asyncio, os, sys, time, subprocess, signal, tempfile, onlyone
ONLYONE = os.environ.get("ONLYONE") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../target/debug/onlyone")
where = sys.argv[1] if len(sys.argv) > 1 else None
kw = {"postgres": where} if where else {"dir": tempfile.mkdtemp()}
name = f"e5-{os.getpid()}"
args = ["--postgres", where] if where else ["--dir", kw["dir"]]
holder = subprocess.Popen([ONLYONE, "run", *args, "--name", name, "--", "sleep", "1.5"])
time.sleep(0.5)
async def main():
    lock = onlyone.Lock(name, **kw)
    wait = asyncio.ensure_future(lock.acquire_async(timeout=float(os.environ.get("WAIT", "30"))))
    await asyncio.sleep(0.5)                  # the wait is under way
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    try:
        held = await wait
    except onlyone.Held as err:
        print("parent gave up:", err, flush=True)
        os.kill(child, signal.SIGKILL); os.waitpid(child, 0)
        return
    print("parent got it, token", held.token, flush=True)
    held.release()
    t0 = time.monotonic()
    while onlyone.status(name, **kw).held and time.monotonic() - t0 < 15:
        time.sleep(0.1)
    print(f"after release: held for {time.monotonic()-t0:.1f} s more; status now held={onlyone.status(name, **kw).held}", flush=True)
    other = onlyone.Lock(name, **kw).try_acquire()
    print("a new instance gets it:", other is not None, flush=True)
    os.kill(child, signal.SIGKILL); os.waitpid(child, 0)
asyncio.run(main())
holder.wait()
