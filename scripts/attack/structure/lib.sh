# Shared by the structure attack scripts (issue 10's restructuring).
# O: the onlyone binary (default: this worktree's debug build); W: the
# witness (takes a non-blocking flock of its own, logs ENTER/EXIT/OVERLAP);
# P: PostgreSQL for locks (the shared server; sessions that the scripts end
# are only onlyone's own, by application_name); T: scratch.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
O=${O:-$here/../../../target/debug/onlyone}
W=$here/../pg/witness.py
P=${P:-postgres://root@127.0.0.1:5432/test}
T=${T:-${TMPDIR:-/tmp}/onlyone-attack-structure}; mkdir -p "$T"
export ONLYONE_DIR=$T/locks; mkdir -p -m 700 "$ONLYONE_DIR"
# Waits until log $1 has $2 (1) ENTER lines.
wait_enter() {
  for _ in $(seq 400); do [ "$(grep -c ENTER "$1" 2>/dev/null || true)" -ge "${2:-1}" ] 2>/dev/null && return 0; sleep 0.05; done
  echo "no ENTER in $1"; return 1
}
# Ends the PostgreSQL session that holds lock $1 (only onlyone's, by name).
term_holder() {
  psql -qAt "$P" -c "select pg_terminate_backend(pid) from pg_stat_activity where application_name like 'onlyone:$1@%' and pid in (select pid from pg_locks where locktype='advisory' and granted)"
}
# Prints OVERLAP lines of log $1, and says whether there were any.
verdict() {
  if grep -q OVERLAP "$1"; then echo "VERDICT: OVERLAP (two at once)"; grep OVERLAP "$1"; else echo "VERDICT: no overlap"; fi
}
