# E11: on_lost="exit" (default) while the main thread is busy: in C holding
# the GIL (BUSY=gil), sleeping (BUSY=sleep), in asyncio (BUSY=asyncio).
import sys, time, os, asyncio, onlyone
name, url, busy = sys.argv[1], sys.argv[2], sys.argv[3]
onlyone.single_instance(name, postgres=url)
print("holding", flush=True)
if busy == "gil":
    while True:
        sum(range(10**10))          # C, GIL held for a long time
elif busy == "sleep":
    time.sleep(3600)
else:
    async def main():
        while True:
            await asyncio.sleep(3600)
    asyncio.run(main())
