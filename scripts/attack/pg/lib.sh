# Shared by the PostgreSQL attack scripts: U names a server you may
# terminate sessions on (a throwaway cluster: see scripts/with-postgres);
# O is the onlyone binary, W the witness; logs go to $T.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export U=${U:?set U to a throwaway PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:PORT/postgres}
export ONLYONE_POSTGRES_URL=$U
O=${O:-$here/../../../target/release/onlyone}
W=$here/witness.py
T=${T:-${TMPDIR:-/tmp}/onlyone-attack-pg}; mkdir -p "$T"
# Ends the session that holds lock $1.
term_holder() {
  psql -qAt "$U" -c "select pg_terminate_backend(pid) from pg_stat_activity where application_name like 'onlyone:$1@%' and pid in (select pid from pg_locks where locktype='advisory' and granted)"
}
# Waits until log $1 has $2 (1) ENTER lines.
wait_enter() {
  for _ in $(seq 200); do [ "$(grep -c ENTER "$1" 2>/dev/null || true)" -ge "${2:-1}" ] 2>/dev/null && return 0; sleep 0.05; done
  echo "no ENTER"; return 1
}
