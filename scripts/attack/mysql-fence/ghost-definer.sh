#!/usr/bin/env bash
# onlyone's own trigger and fence bodies, re-created with DEFINER an account
# that does not exist (as after a role that planted them was dropped): the
# check reads bodies, not definers. What does a start say and return, and
# does the fence fail closed?
set -u
base=${ONLYONE_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
hostport=${base#mysql://root@}; hostport=${hostport%%/*}
host=${hostport%%:*}; port=${hostport##*:}
db=onlyone_amf_ghost_$$
bin=$(dirname "$0")/../../../target/debug/onlyone
m() { mariadb --no-defaults -h "$host" -P "$port" -u root -N -B "$@"; }
m -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db"
url="mysql://root@$host:$port/$db"
"$bin" run --mysql "$url" --name j -- true; echo "first exit $?"
fn=$(m "$db" -e "SHOW CREATE FUNCTION onlyone_fence" | cut -f3 | sed 's/DEFINER=`[^`]*`@`[^`]*`/DEFINER=`ghost`@`%`/')
m "$db" -e "DROP FUNCTION onlyone_fence"
printf 'DELIMITER ;;\n%s;;\n' "$(printf '%b' "$fn")" | m "$db" 2>&1 | tail -1
"$bin" run --mysql "$url" --name j -- sh -c 'mariadb --no-defaults -h '"$host"' -P '"$port"' -u root -N -e "START TRANSACTION; $ONLYONE_FENCE; COMMIT" 2>&1; echo "fence exit $?"'; echo "ghost fence: run exit $?"
trg=$(m "$db" -e "SHOW CREATE TRIGGER onlyone_guard_update" | cut -f3 | sed 's/DEFINER=`[^`]*`@`[^`]*`/DEFINER=`ghost`@`%`/')
m "$db" -e "DROP TRIGGER onlyone_guard_update"
printf 'DELIMITER ;;\n%s;;\n' "$(printf '%b' "$trg")" | m "$db" 2>&1 | tail -1
"$bin" run --mysql "$url" --name j -- echo ran 2>&1 | cut -c1-300; echo "ghost trigger: run exit ${PIPESTATUS[0]}"
m -e "DROP DATABASE $db"
