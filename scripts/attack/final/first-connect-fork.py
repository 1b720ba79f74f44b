# Tries (a-final): a fresh program whose thread makes its FIRST MySQL
# connection while the main thread forks (TLS too: ssl-mode in URL), at fine offsets (0.5 ms steps),
# with the server named by host name (localhost: getaddrinfo on tokio's
# blocking thread) and by address; every child must acquire within 8 s.
# Found: nothing (see docs/RELIABILITY.md, a-final).
# Covers the one-time inits on the connect path left after finding 2:
# mysql_async's buffer pool (OnceLock, microseconds), tokio's per-runtime
# statics, glibc's resolver. Usage: python first-connect-fork.py URL RUNS
import os, subprocess, sys, tempfile
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "python", "tests"))
from test_attack_fork import SCRIPT
url, runs = sys.argv[1], int(sys.argv[2])
start = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
step = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0005
path = os.path.join(tempfile.mkdtemp(prefix="afinal-"), "prog.py")
# The child must have acquired, not just exited: a child that could not
# acquire exits 2 ("ok" only for a child that held its lock).
prog = SCRIPT.replace("""        onlyone.Lock(f"afork{os.getpid()}", **{KIND: URL}).acquire(timeout=2).release()
    except Exception:
        pass""", """        onlyone.Lock(f"afork{os.getpid()}", **{KIND: URL}).acquire(timeout=2).release()
        return True
    except Exception as e:
        print("error", e, file=sys.stderr)
        return False""").replace("""    attempt()
    os._exit(0)""", """    os._exit(0 if attempt() else 2)""").replace("""    if os.waitpid(pid, os.WNOHANG)[0]:
        print("ok")""", """    p, status = os.waitpid(pid, os.WNOHANG)
    if p:
        print("ok" if status == 0 else f"child status {status}")""")
prog = prog.replace("""os.kill(pid, 9)""", """import subprocess
open(f"/tmp/afinal-hung-{pid}.txt", "w").write(subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"], capture_output=True, text=True).stdout)
os.kill(pid, 9)""")
assert prog != SCRIPT and "os._exit(0 if attempt() else 2)" in prog and "child status" in prog
open(path, "w").write(prog)
hung = []
for i in range(runs):
    delay = str(start + step * i)
    out = subprocess.run([sys.executable, path, delay, "mysql", url],
                         capture_output=True, text=True, timeout=60).stdout.strip()
    if out != "ok":
        hung.append((delay, out))
print("runs", runs, "hung", hung)
