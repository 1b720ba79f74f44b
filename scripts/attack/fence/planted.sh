#!/bin/sh
# A function planted under the fence's name before onlyone creates its table
# is kept (to_regprocedure check) and passes every token: stale writes commit.
set -u
U=postgres://root@127.0.0.1:5432/test
T=a14p
OO=${OO:-/work/wt/a14/target/debug/onlyone}
psql -qX "$U" -c "DROP TABLE IF EXISTS $T; DROP FUNCTION IF EXISTS ${T}_fence(text,bigint); DROP TABLE IF EXISTS ${T}_w;
 CREATE TABLE ${T}_w(token bigint);
 CREATE FUNCTION public.${T}_fence(name text, token bigint) RETURNS void LANGUAGE sql AS 'SELECT NULL::void';"
F=$($OO run --postgres "$U" --table $T --name planted -- sh -c 'echo "$ONLYONE_FENCE"')
echo "fence: $F"
# The holder has released; its token is stale now.
psql -qX "$U" -v ON_ERROR_STOP=1 -c "BEGIN; $F; INSERT INTO ${T}_w VALUES (1); COMMIT;" && echo "STALE WRITE COMMITTED"
psql -qXAt "$U" -c "select count(*) from ${T}_w"
psql -qX "$U" -c "DROP TABLE IF EXISTS $T; DROP TABLE IF EXISTS ${T}_w; DROP FUNCTION IF EXISTS ${T}_fence(text,bigint);"
