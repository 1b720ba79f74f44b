#!/usr/bin/env bash
# E14: K copies of a script with single_instance started at the same instant
# (cron and a hand start), files or PostgreSQL (URL and key=value spellings
# mixed), plus the command. Witness: a non-blocking flock while "working".
set -u
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
PY=${PY:-$ROOT/target/py-venv/bin/python}; O=$ROOT/target/debug/onlyone
S=$(mktemp -d); mkdir -m 700 $S/locks; N=e14-$$; K=${K:-8}
cat > $S/prog.py <<'PY'
import fcntl, os, sys, time, onlyone
where, witness, log = sys.argv[1:4]
kw = {"dir": where} if where.startswith("/") else {"postgres": where}
onlyone.single_instance(os.environ["N"], **kw)
fd = os.open(witness, os.O_RDWR | os.O_CREAT)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); tag = "RUN"
except BlockingIOError:
    tag = "OVERLAP"
open(log, "a").write(f"{tag} {os.getpid()}\n")
time.sleep(1)
PY
for round in 1 2 3; do
  for i in $(seq 1 $K); do
    case ${MODE:-file} in
      file) W=$S/locks;;
      pg) if (( i % 2 )); then W=postgres://root@127.0.0.1:5432/test; else W="host=127.0.0.1 port=5432 user=root dbname=test"; fi;;
    esac
    N=$N-$round $PY $S/prog.py "$W" $S/witness $S/log 2>/dev/null &
  done
  if [[ ${MODE:-file} == file ]]; then
    $O run --dir $S/locks --name $N-$round -- flock -n -E 99 $S/witness sh -c "echo RUN-cli >> $S/log; sleep 1" 2>/dev/null &
  else
    $O run --postgres postgres://root@127.0.0.1:5432/test --name $N-$round -- flock -n -E 99 $S/witness sh -c "echo RUN-cli >> $S/log; sleep 1" 2>/dev/null &
  fi
  wait; [[ $? == 99 ]] && echo OVERLAP-cli >> $S/log
  echo "round $round: $(grep -c RUN $S/log) runs so far, $(grep -c OVERLAP $S/log) overlaps"
done
