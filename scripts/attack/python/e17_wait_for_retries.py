# E17: an asyncio bot retrying `asyncio.wait_for(lock.acquire_async(), 1)`
# while another holder keeps a PostgreSQL lock: how many database sessions
# and threads does it leave behind?
import asyncio, os, sys, time, subprocess, onlyone
url = sys.argv[1]; name = f"e17-{os.getpid()}"
ONLYONE = os.environ.get("ONLYONE") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../target/debug/onlyone")
holder = subprocess.Popen([ONLYONE, "run", "--postgres", url, "--name", name, "--", "sleep", "30"])
while not onlyone.status(name, postgres=url).held:
    time.sleep(0.05)
def sessions():
    out = subprocess.run(["psql", "-XAtc", f"select count(*) from pg_stat_activity where application_name like 'onlyone:{name}@%:{os.getpid()}'", url], capture_output=True, text=True)
    return out.stdout.strip()
async def main():
    lock = onlyone.Lock(name, postgres=url)
    for i in range(8):
        try:
            await asyncio.wait_for(lock.acquire_async(), 1)
        except (asyncio.TimeoutError, TimeoutError):
            pass
        print(f"after {i+1} timed-out tries: {sessions()} sessions of this process, {len(os.listdir('/proc/self/task'))} threads", flush=True)
asyncio.run(main())
holder.kill(); holder.wait()
time.sleep(1)
print("after the holder left:", sessions(), "sessions")
