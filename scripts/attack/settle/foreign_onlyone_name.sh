#!/bin/bash
# A foreign session (psql) holds the lock's advisory key. Variants:
#   plain     application_name 'psql'
#   named     application_name 'onlyone:x@h:1' (claims to be an onlyone starter)
#   forged    named, and the row forged 'released' naming its backend pid
#             (written while it holds the key, so the guard lets it)
# `stop` and `run --replace` must never end it: 77, and the session lives.
# Prints each one's exit code and how long it took.
#   foreign_onlyone_name.sh [URL]
set -u
URL=${1:-postgres://root@127.0.0.1:5432/test}
BIN=$(realpath ${BIN:-$(dirname "$0")/../../../target/debug/onlyone})
DIR=$(mktemp -d)
T=(--heartbeat 100ms --kill-grace 300ms --lock-delay 1s)
for variant in plain named forged; do
  NAME=settle-foreign-$$-$variant
  $BIN run --postgres "$URL" --name "$NAME" "${T[@]}" -- true || exit 1
  KEY=$(psql "$URL" -Atc "SELECT key FROM onlyone_locks WHERE name = '$NAME'")
  app=psql; [ $variant != plain ] && app='onlyone:x@h:1'
  forge=""
  [ $variant = forged ] && forge="UPDATE onlyone_locks SET backend_pid = pg_backend_pid() WHERE key = $KEY AND state = 'released';"
  mkfifo "$DIR/in-$variant"
  PGAPPNAME=$app psql "$URL" -Atq <"$DIR/in-$variant" >"$DIR/psql-$variant.out" 2>&1 &
  P=$!
  exec 3>"$DIR/in-$variant"
  echo "SELECT pg_advisory_lock($KEY); $forge SELECT pg_backend_pid();" >&3
  for _ in $(seq 100); do [ "$(wc -l <"$DIR/psql-$variant.out")" -ge 2 ] && break; sleep 0.02; done
  BPID=$(tail -1 "$DIR/psql-$variant.out")
  for cmd in stop replace; do
    start=$(date +%s.%N)
    if [ $cmd = stop ]; then
      $BIN stop --postgres "$URL" "$NAME" >"$DIR/o" 2>"$DIR/e"; c=$?
    else
      $BIN run --postgres "$URL" --name "$NAME" "${T[@]}" --replace -- echo ran >"$DIR/o" 2>"$DIR/e"; c=$?
    fi
    took=$(echo "$(date +%s.%N) - $start" | bc)
    alive=$(psql "$URL" -Atc "SELECT count(*) FROM pg_stat_activity WHERE pid = $BPID")
    printf '%-7s %-8s exit %s  %.2fs  session alive: %s  %s\n' $variant $cmd $c "$took" "$alive" "$(tail -1 "$DIR/e" | cut -c1-110)"
    [ -s "$DIR/o" ] && echo "  STDOUT: $(cat "$DIR/o")"
  done
  echo "SELECT pg_advisory_unlock($KEY);" >&3
  exec 3>&-
  wait $P
done
rm -rf "$DIR"
