#!/usr/bin/env python3
"""PostgreSQL holder whose stderr is a full pipe: a warning from the
heartbeat thread (here provoked by a NOTIFY on the stop channel that the
row does not back, which anyone who may connect can send) blocks that
thread; the server then ends the silent session, a second starter takes
the lock after the lock-delay, and the first command still runs.
usage: pg_blocked_stderr.py ONLYONE URL   (prints OVERLAP or HELD)"""
import fcntl, json, os, subprocess, sys, tempfile, time
onlyone, url = sys.argv[1], sys.argv[2]
name = "advrun-stderr-%d" % os.getpid()
d = tempfile.mkdtemp()
pidfile = os.path.join(d, "pid")
r, w = os.pipe()
common = ["--postgres", url, "--heartbeat", "200ms", "--kill-grace", "200ms", "--lock-delay", "1s"]
h = subprocess.Popen([onlyone, "run", *common, "--name", name, "--", "sh", "-c", 'echo $$ > "$0"; exec sleep 1000', pidfile],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=w)
while not (os.path.exists(pidfile) and open(pidfile).read().strip()):
    time.sleep(0.01)
cmd = int(open(pidfile).read())
st = json.loads(subprocess.run([onlyone, "status", "--postgres", url, name, "--json"], capture_output=True).stdout)
import re
key = re.search(r" key (-?[0-9]+)", st["location"]).group(1)
token = st["holder"]["record"]["token"]
print("key", key, "token", token, flush=True)
# Fill the pipe through our own file description (O_NONBLOCK on it only).
f = os.open("/proc/self/fd/%d" % w, os.O_WRONLY | os.O_NONBLOCK)
try:
    while True:
        os.write(f, b"x" * 4096)
except BlockingIOError:
    pass
subprocess.run(["psql", url, "-Atc", "select pg_notify('onlyone_stop_%s', '%s someone:1')" % (key, token)], check=True,
               stdout=subprocess.DEVNULL)
t0 = time.monotonic()
second = subprocess.Popen([onlyone, "run", *common, "--name", name, "--timeout", "30s", "--", "sh", "-c",
                           "s=$(cut -d' ' -f3 /proc/%d/stat 2>/dev/null); [ -n \"$s\" ] && [ \"$s\" != Z ] && echo OVERLAP || echo ALONE" % cmd],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
out, err = second.communicate()
print("second starter after %.1f s: rc %d %s %s" % (time.monotonic() - t0, second.returncode, out.decode().strip(),
                                                   err.decode().strip()[-300:]))
print("first command alive:", os.path.exists("/proc/%d" % cmd))
os.kill(cmd, 9)
os.set_blocking(r, False)
try:
    while os.read(r, 65536):
        pass
except BlockingIOError:
    pass
h.kill(); h.wait()
