#!/usr/bin/env python3
# Deletes a held lock's FILE (not its directory) on the portable path when
# the holder has no socket file, and starts a starter at once each time.
# README ("Platforms") says a deleted lock file leaves "no window: the
# socket file beside it keeps starters out"; a holder without a socket (its
# --dir is longer than a socket path allows, or something that is not a
# socket sits at .onlyone-HASH) has nothing beside it.
#
#   scripts/attack/portable/file_deletion_without_socket.py BINARY long|planted|cleaned [ROUNDS]
#
# long:    a --dir of 70 characters (socket path > 108 bytes on Linux; 62
#          characters are enough on macOS, 103 bytes)
# planted: a short --dir with an empty regular file at .onlyone-HASH
# cleaned: a short --dir whose holder has its socket; a cleanup deletes the
#          directory's files (find DIR -mindepth 1 -delete: the socket
#          file and the lock file), not the directory
# Prints how many starters ran (exit 0) while the holder held, and how many
# of them the witness flock caught overlapping (exit 99).
import glob, os, subprocess, sys, tempfile, time

onlyone, variant = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 50
root = tempfile.mkdtemp(prefix="a11-")
locks = os.path.join(root, "d" * 70) if variant == "long" else os.path.join(root, "locks")
os.makedirs(locks)
witness = os.path.join(root, "witness")
cmd = [onlyone, "run", "--dir", locks, "--name", "bot", "--"]

if variant == "planted":
    # The socket's file name, learnt from a holder that comes and goes.
    subprocess.run(cmd + ["sh", "-c", "ls -a .. >/dev/null; sleep 0.3"], check=True)
    sock = [n for n in os.listdir(locks) if n.startswith(".onlyone-")][0]
    os.remove(os.path.join(locks, sock))
    open(os.path.join(locks, sock), "w").close()


def hold():
    # -w: a killed holder's command may linger an instant (its guardian kills it).
    h = subprocess.Popen(cmd + ["flock", "-w", "5", "-E", "99", witness, "sh", "-c", "echo ready; exec sleep 1000"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert h.stdout.readline() == b"ready\n"
    return h


holder = hold()
ran = overlaps = 0
for i in range(rounds):
    if variant == "cleaned":
        subprocess.run(["find", locks, "-mindepth", "1", "-delete"])
    else:
        os.remove(os.path.join(locks, "bot.lock"))
    r = subprocess.run(cmd + ["flock", "-n", "-E", "99", witness, "true"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if r.returncode in (0, 99):
        ran += 1
        overlaps += r.returncode == 99
    if holder.poll() is not None or r.returncode in (0, 99):
        holder.kill(); holder.wait(); holder = hold()
    time.sleep(0.05)
holder.kill(); holder.wait()
print(f"{variant}: {rounds} deletions of the lock file; starters that ran beside the holder: {ran}; caught by the witness: {overlaps}")
