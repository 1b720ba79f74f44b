#!/bin/sh
# Lock lost while held (holder socket squatted by `nobody`, so the file is
# the only lock; the file is replaced by one another process locks): how
# long until a command that ignores SIGTERM is gone, with --kill-grace G.
# usage: loss_latency.sh ONLYONE GRACE ROUNDS   (root, Linux, python3)
set -eu
B=$1; G=$2; N=$3
D=$(mktemp -d); mkdir -m 700 $D/locks
# The holder socket's abstract name, from a first holder.
$B run --dir $D/locks --name lat -- sleep 100 & H=$!; sleep 0.3
INO=$(ls -l /proc/$H/fd | sed -n 's/.*socket:\[\([0-9]*\)\].*/\1/p' | head -1)
SOCK=$(awk -v i=$INO '$7==i{print substr($8,2)}' /proc/net/unix)
kill $H; wait $H 2>/dev/null || true
setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 -c "
import socket,time
s=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM); s.bind(b'\0$SOCK'); s.listen(8); time.sleep(1000)" & SQ=$!
sleep 0.3
for i in $(seq 1 $N); do
  $B run -q --dir $D/locks --name lat --kill-grace $G -- sh -c 'trap "" TERM; echo $$ > "$0"; while :; do sleep 0.05; done' $D/pid 2>$D/err & H=$!
  while [ ! -s $D/pid ]; do sleep 0.01; done; C=$(cat $D/pid)
  : > $D/other; flock $D/other sleep 100 & L=$!; sleep 0.1
  T0=$(date +%s%N); mv $D/other $D/locks/lat.lock
  while kill -0 $C 2>/dev/null; do sleep 0.002; done; T1=$(date +%s%N)
  wait $H || RC=$?; echo "round $i: command gone $(( (T1-T0)/1000000 )) ms after the loss (grace $G), onlyone exit ${RC:-0}"
  kill $L; wait $L 2>/dev/null || true; rm -f $D/pid $D/locks/lat.lock; RC=
done
kill $SQ; rm -rf $D
