#!/usr/bin/env bash
# Tries: a server with lower_case_table_names=1 (database names without case, as on
# Windows/macOS and some Linux set-ups): one database reached as /onlyone_test and
# /ONLYONE_TEST. Same state table; are the two holders of one NAME kept apart?
# Run: ONLYONE_ATTACK_MARIADB_ARGS=--lower-case-table-names=1 scripts/attack/mybench/with-mariadb-args scripts/attack/mybench/dbcase.sh
set -u
up=${ONLYONE_TEST_MYSQL_URL%/*}/ONLYONE_TEST
w=$(mktemp)
target/debug/onlyone run --mysql "$ONLYONE_TEST_MYSQL_URL" -n job -- flock -n -E 99 "$w" sleep 3 &
p1=$!
sleep 1
target/debug/onlyone run --mysql "$up" -n job -- flock -n -E 99 "$w" sleep 1
echo "second rc=$?"
wait $p1; echo "first rc=$?"
target/debug/onlyone status --mysql "$ONLYONE_TEST_MYSQL_URL" 2>&1 | head
