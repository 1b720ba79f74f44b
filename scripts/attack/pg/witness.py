#!/usr/bin/env python3
# witness.py WFILE LOG SECONDS [ignore-term]
# Takes a non-blocking flock on WFILE (independent of onlyone); if it is
# held by a live process, logs OVERLAP. Logs ENTER/EXIT with monotonic time.
import fcntl, os, sys, time, signal
wfile, log, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
if len(sys.argv) > 4 and sys.argv[4] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
def say(s):
    with open(log, "a") as f:
        f.write(f"{time.monotonic():.3f} {os.getpid()} tok={os.environ.get('ONLYONE_TOKEN')} {s}\n")
fd = os.open(wfile, os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    say("OVERLAP")
    # wait to see whether the other holder is merely exiting
    fcntl.flock(fd, fcntl.LOCK_EX)
    say("ENTER-after-overlap")
else:
    say("ENTER")
end = time.monotonic() + secs
while time.monotonic() < end:
    time.sleep(0.05)
say("EXIT")
