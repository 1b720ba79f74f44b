#!/bin/sh
# Any role (PUBLIC has EXECUTE on the SECURITY DEFINER fence) with no
# privilege on the state table learns the current token from the ON001
# message and then passes the fence with it.
U=postgres://root@127.0.0.1:5432/test; export U
T=a14f
OO=${OO:-/work/wt/a14/target/debug/onlyone}
psql -qX "$U" -c "DROP ROLE IF EXISTS a14_nobody; CREATE ROLE a14_nobody LOGIN"
$OO run --postgres "$U" --table $T --name forged -- sh -c '
msg=$(psql -qXAt "postgres://a14_nobody@127.0.0.1:5432/test" -c "SELECT public.a14f_fence('"'"'forged'"'"', 999)" 2>&1)
echo "$msg" | head -1
cur=$(echo "$msg" | sed -n "s/.*current token \([0-9]*\).*/\1/p" | head -1)
psql -qXAt "postgres://a14_nobody@127.0.0.1:5432/test" -c "SELECT public.a14f_fence('"'"'forged'"'"', $cur)" && echo "a14_nobody PASSED the fence with token $cur"
psql -qXAt "postgres://a14_nobody@127.0.0.1:5432/test" -c "SELECT token FROM public.a14f" 2>&1 | head -1'
psql -qX "$U" -c "DROP TABLE IF EXISTS $T; DROP FUNCTION IF EXISTS ${T}_fence(text,bigint); DROP ROLE IF EXISTS a14_nobody"
