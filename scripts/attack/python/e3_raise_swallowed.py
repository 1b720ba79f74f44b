# E3: on_lost="raise" in a bot whose loop logs and retries any Exception
# (the usual shape of a trading bot). Prints WORKING lines with time; the
# lock is lost by `onlyone stop`; does the work go on?
import sys, time, traceback, asyncio, onlyone
name, url, shape = sys.argv[1], sys.argv[2], sys.argv[3]
lock = onlyone.Lock(name, postgres=url, heartbeat=0.2, on_lost="raise")

def step():
    time.sleep(0.01)

if shape == "loop":
    with lock as held:
        print("holding", flush=True)
        last = 0
        while True:
            try:
                step()
                if time.monotonic() - last > 0.5:
                    last = time.monotonic()
                    print(f"WORKING {time.time():.3f} lost={held.lost}", flush=True)
            except Exception as err:
                print(f"step failed, retrying: {type(err).__name__}: {err}", flush=True)
elif shape == "asyncio":
    async def heartbeat_task():
        while True:
            await asyncio.sleep(0.001)
    async def main():
        async with lock as held:
            print("holding", flush=True)
            bg = [asyncio.create_task(heartbeat_task()) for _ in range(5)]
            last = 0
            while True:
                await asyncio.sleep(0.05)
                if time.monotonic() - last > 0.5:
                    last = time.monotonic()
                    print(f"WORKING {time.time():.3f} lost={held.lost} tasks_done={[t.done() for t in bg]}", flush=True)
    asyncio.run(main())
