# Tries (a-final): a fresh program whose thread makes its FIRST MySQL
# connection while the main thread forks, at fine offsets (0.5 ms steps),
# with the server named by host name (localhost: getaddrinfo on tokio's
# blocking thread) and by address; every child must acquire within 8 s.
# Covers the one-time inits on the connect path left after finding 2:
# mysql_async's buffer pool (OnceLock, microseconds), tokio's per-runtime
# statics, glibc's resolver. Usage: python first-connect-fork.py URL RUNS
import os, subprocess, sys, tempfile
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "python", "tests"))
from test_attack_fork import SCRIPT
url, runs = sys.argv[1], int(sys.argv[2])
path = os.path.join(tempfile.mkdtemp(prefix="afinal-"), "prog.py")
open(path, "w").write(SCRIPT)
hung = []
for i in range(runs):
    delay = str(0.0005 * i)
    out = subprocess.run([sys.executable, path, delay, "mysql", url],
                         capture_output=True, text=True, timeout=60).stdout.strip()
    if out != "ok":
        hung.append((delay, out))
print("runs", runs, "hung", hung)
