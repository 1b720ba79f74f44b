#!/usr/bin/env bash
# Tries: the driver's settings query is skipped (max_allowed_packet assumed 64 MiB);
# a server with a small max_allowed_packet and a long command line.
# Run: scripts/attack/mybench/with-mariadb-args scripts/attack/mybench/packet.sh
set -u
client=$(command -v mariadb || command -v mysql)
hp=${ONLYONE_TEST_MYSQL_URL#mysql://root@}; host=${hp%%:*}; port=${hp#*:}; port=${port%%/*}
"$client" --no-defaults -h "$host" -P "$port" -uroot -e "SET GLOBAL max_allowed_packet=4096"
big=$(head -c 20000 /dev/zero | tr '\0' x)
start=$(date +%s.%N)
timeout 60 target/debug/onlyone run --mysql "$ONLYONE_TEST_MYSQL_URL" -n pk -- true "$big"
echo "rc=$? after $(echo "$(date +%s.%N) - $start" | bc) s"
