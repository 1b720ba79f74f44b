#!/usr/bin/env python3
"""Many `onlyone run --wait` starters of one name, a witness flock in the
command (exit 99 = two at once), and chaos: SIGKILL / SIGSTOP+SIGCONT of
random supervisors, the lock file and the lock directory deleted, renamed,
replaced, a symlinked directory re-pointed. Prints the exit-code counts.

usage: storm.py ONLYONE SECONDS WORKERS MODE   (MODE: abs | rel | symlink | env | default)
"""
import collections, os, random, shutil, signal, subprocess, sys, tempfile, threading, time

onlyone, seconds, workers, mode = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
base = tempfile.mkdtemp(prefix="storm-")
witness = os.path.join(base, "witness")
open(witness, "w").close()
name = "storm%d" % os.getpid()
real = os.path.join(base, "locks")
alt = os.path.join(base, "locks-alt")
link = os.path.join(base, "link")
os.mkdir(real, 0o700)
os.mkdir(alt, 0o700)
os.symlink(real, link)
env = dict(os.environ)
cwd = base
if mode == "abs":
    dirargs, lockdir = ["--dir", real], real
elif mode == "rel":
    dirargs, lockdir = ["--dir", "locks"], real
elif mode == "symlink":
    dirargs, lockdir = ["--dir", link], real
elif mode == "env":
    dirargs, lockdir = [], real
    env = {"PATH": "/usr/bin:/bin", "ONLYONE_DIR": real}
elif mode == "pool":
    dirargs, lockdir = ["--dir", real], real
else:
    dirargs, lockdir = [], "/dev/shm/onlyone-%d" % os.getuid()
    env = {"PATH": "/usr/bin:/bin"}

WRAP = r'''ino=$(stat -c %i "$ONLYONE_LOCK_FILE" 2>/dev/null)
sock=$(for l in /proc/$PPID/fd/*; do readlink $l; done | grep socket | tr -dc '0-9\n' | while read i; do awk -v i=$i '$7==i{print $8}' /proc/net/unix; done | tr '\n' ,)
t0=$(date +%s.%N)
flock -n -E 99 "$1" sleep "$2"; rc=$?
echo "sup=$PPID cmd=$$ tok=$ONLYONE_TOKEN ino=$ino sock=$sock $t0 $(date +%s.%N) rc=$rc" >> "$1.log"
exit $rc'''
# STORM_LIGHT=1: the witness first, nothing read before it (bash's clock).
if os.environ.get("STORM_LIGHT"):
    # The witness is held by this bash alone, at fd 9, ABOVE onlyone's lock
    # file (fd 4) and holder socket (fd 5), and the sleep gets none of the
    # three: a SIGKILLed process frees its files highest descriptor first
    # (the kernel's task_work runs LIFO), so the witness is always free
    # before onlyone's lock is. With `flock -n -E 99 "$1" sleep`, the witness
    # sat at fd 3 in two processes and a dying command could still hold it
    # after the lock was free: a late release, read as a 99 (see
    # late_release.sh and docs/RELIABILITY.md).
    WRAP = r'''t0=$EPOCHREALTIME; exec 9>>"$1"
if flock -n 9; then
  ( for l in /proc/$BASHPID/fd/*; do case $(readlink $l) in socket:*|*.lock) eval "exec ${l##*/}>&-";; esac; done
    exec 9>&-; exec sleep "$2" ); rc=$?
else
  rc=99
  find /proc/[0-9]*/fd -lname "$1" -o -lname "*/locks*/storm*" 2>/dev/null | while read f; do
    p=${f#/proc/}; p=${p%%/*}; echo "DUMP $f -> $(readlink $f) state=$(cut -d' ' -f3 /proc/$p/stat) ppid=$(cut -d' ' -f4 /proc/$p/stat) pgid=$(cut -d' ' -f5 /proc/$p/stat) cmd=$(tr '\0' ' ' < /proc/$p/cmdline)" >&2
  done
  cat /proc/locks >&2
  echo "DUMP me=$$ sup=$PPID token=$ONLYONE_TOKEN lock=$(ls -li "$ONLYONE_LOCK_FILE" 2>&1)" >&2
fi
echo "sup=$PPID cmd=$$ tok=$ONLYONE_TOKEN ino=- sock=- $t0 $EPOCHREALTIME rc=$rc" >> "$1.log"
exit $rc'''
codes = collections.Counter()
procs = []
plock = threading.Lock()
stop = time.monotonic() + seconds
ops = collections.Counter()
errs = collections.Counter()

def worker():
    while time.monotonic() < stop:
        cmd = [onlyone, "run", *dirargs, "--name", name, "--wait", "-v", "--kill-grace", "200ms", "--",
               "bash" if os.environ.get("STORM_LIGHT") else "sh", "-c", WRAP, "sh", witness, random.choice(["0.01", "0.1", "0.3"])]
        if mode == "pool":
            t = random.choice(["0.01", "0.1", "0.3"])
            if random.random() < 0.75:
                cmd = [onlyone, "run", *dirargs, "--name", name, "--max", "2", "--wait", "--kill-grace", "200ms", "--",
                       "sh", "-c", 'exec flock -n -E 99 "$1.$ONLYONE_SLOT" sleep "$2"', "sh", witness, t]
            else:
                cmd = [onlyone, "run", *dirargs, "--name", name, "--wait", "--kill-grace", "200ms", "--",
                       "flock", "-n", "-E", "99", witness + ".1", "flock", "-n", "-E", "99", witness + ".2", "sleep", t]
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with plock:
            procs.append(p)
        _, err = p.communicate()
        with plock:
            procs.remove(p)
        codes[p.returncode] += 1
        if p.returncode == 99:
            print("=== 99 at", time.monotonic(), err.decode(errors="replace"), flush=True)
        for line in err.decode(errors="replace").splitlines():
            if "waiting for lock" in line:
                continue
            key = line.replace(name, "NAME").replace(base, "BASE")
            key = " ".join(w if not w.isdigit() else "N" for w in key.split())[:150]
            errs[key] += 1

def chaos():
    while time.monotonic() < stop:
        time.sleep(random.uniform(0.005, 0.05))
        op = random.choice(["kill", "stop", "rmfile", "rmdir", "renamedir", "relink", "nothing"])
        if mode == "default" and op in ("rmdir", "renamedir", "relink"):
            op = "rmfile"
        with plock:
            victims = list(procs)
        try:
            if op == "kill" and victims:
                random.choice(victims).send_signal(signal.SIGKILL)
            elif op == "stop" and victims:
                v = random.choice(victims)
                v.send_signal(signal.SIGSTOP)
                time.sleep(random.uniform(0.01, 0.3))
                v.send_signal(signal.SIGCONT)
            elif op == "rmfile":
                files = [f for f in os.listdir(lockdir) if f.startswith(name)] or [name + ".lock"]
                os.unlink(os.path.join(lockdir, random.choice(files)))
            elif op == "rmdir":
                shutil.rmtree(lockdir)
            elif op == "renamedir":
                gone = lockdir + ".old%d" % random.randrange(10**9)
                os.rename(lockdir, gone)
                os.mkdir(lockdir, 0o700)
                time.sleep(0.02)
                shutil.rmtree(gone, ignore_errors=True)
            elif op == "relink" and mode == "symlink":
                # re-point the symlink between two directories
                tmp = link + ".new"
                target = alt if os.readlink(link) == real else real
                os.symlink(target, tmp)
                os.rename(tmp, link)
            ops[op] += 1
        except (FileNotFoundError, ProcessLookupError, FileExistsError, OSError):
            ops[op + "-miss"] += 1

threads = [threading.Thread(target=worker) for _ in range(workers)]
c = threading.Thread(target=chaos)
for t in threads + [c]:
    t.start()
for t in threads + [c]:
    t.join()
print("mode", mode, "exit codes", dict(sorted(codes.items())), "chaos", dict(sorted(ops.items())))
for k, v in errs.most_common(12):
    print("  %5d %s" % (v, k))
if codes[99]:
    rows = [l.split() for l in open(witness + ".log")]
    bad = [r for r in rows if r[-1] == "rc=99"]
    for r in bad:
        t = float(r[5])
        print("OVERLAP:", " ".join(r))
        for o in rows:
            if o is not r and float(o[5]) - 0.5 < t < float(o[6]) + 0.05:
                print("   near:", " ".join(o))
else:
    shutil.rmtree(base, ignore_errors=True)
sys.exit(1 if codes[99] else 0)
