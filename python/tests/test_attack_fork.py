"""The attack on the fork fix (branch fork): each test is one finding, and
failed on the code as it was found."""

import os
import subprocess
import sys

SCRIPT = r"""
import os, sys, threading, time
import onlyone
URL = "postgres://root@127.0.0.1:1/test?sslrootcert=system&connect_timeout=1"
def attempt():
    try:
        onlyone.Lock("t", postgres=URL).acquire(timeout=0)
    except Exception:
        pass
thread = threading.Thread(target=attempt)
thread.start()
time.sleep(float(sys.argv[1]))
pid = os.fork()
if pid == 0:
    attempt()
    os._exit(0)
deadline = time.monotonic() + 8
while time.monotonic() < deadline:
    if os.waitpid(pid, os.WNOHANG)[0]:
        print("ok")
        sys.exit(0)
    time.sleep(0.02)
os.kill(pid, 9)
os.waitpid(pid, 0)
print("hung")
"""


def test_a_child_forked_while_a_thread_reads_the_system_cas_can_acquire(tmp_path):
    """Finding 1: the platform's trusted CAs (sslrootcert=system) were read
    once per process under a std OnceLock. A child forked while another
    thread of its parent read them (some 50 ms, at that thread's first
    PostgreSQL acquisition) inherited the OnceLock "running", and its own
    acquisition with sslrootcert=system waited forever (14 runs in 40 of a
    fresh program, forking 0 to 80 ms after its thread began). No server
    is needed: the CAs are read before the connection, which is refused."""
    path = tmp_path / "prog.py"
    path.write_text(SCRIPT)
    hung = []
    for i in range(24):
        delay = str(0.002 + 0.003 * i)
        out = subprocess.run(
            [sys.executable, str(path), delay], capture_output=True, text=True, timeout=60
        ).stdout.strip()
        if out != "ok":
            hung.append((delay, out))
    assert not hung, f"children hung at their first acquisition (delay, output): {hung}"
