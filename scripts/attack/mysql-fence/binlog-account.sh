#!/usr/bin/env bash
# Run under: ONLYONE_TEST_MARIADB_OPTS="--log-bin=binlog --innodb-rollback-on-timeout=1" scripts/with-mariadb scripts/attack/mysql-fence/binlog-account.sh
# Binary logging on, log_bin_trust_function_creators off, an account with
# every privilege on its database (TRIGGER, CREATE ROUTINE) but not SUPER:
# what does the first start say and return? Then, with everything created
# by root, does the account run, and does its fence work?
set -u
u=${ONLYONE_TEST_MYSQL_URL#mysql://root@}; hostport=${u%%/*}
host=${hostport%%:*}; port=${hostport##*:}
bin=$(dirname "$0")/../../../target/debug/onlyone
m() { mariadb --no-defaults -h "$host" -P "$port" -u root -N -B "$@"; }
m -e "SELECT @@log_bin, @@log_bin_trust_function_creators, @@innodb_rollback_on_timeout"
m -e "CREATE DATABASE IF NOT EXISTS binacct; CREATE USER IF NOT EXISTS 'acct'@'%'; GRANT ALL ON binacct.* TO 'acct'@'%'; GRANT SELECT ON mysql.proc TO 'acct'@'%'"
url="mysql://acct@$host:$port/binacct"
"$bin" run --mysql "$url" --name j -- echo ran; echo "exit $?"
m binacct -e "SHOW TRIGGERS" | cut -f1; m binacct -e "SHOW FUNCTION STATUS WHERE Db='binacct'" | cut -f2
"$bin" run --mysql "mysql://root@$host:$port/binacct" --name j -- echo "root ran"; echo "root exit $?"
"$bin" run --mysql "$url" --name j -- sh -c 'mariadb --no-defaults -h '"$host"' -P '"$port"' -u acct -N -e "START TRANSACTION; $ONLYONE_FENCE; COMMIT"'; echo "account with fence exit $?"
