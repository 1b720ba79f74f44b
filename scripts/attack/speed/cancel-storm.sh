#!/bin/sh
# Cancel storms on a shared session: runs the attack_speed cancel test with
# ROUNDS rounds and cancels SPREAD_US apart at most, against the server in
# ONLYONE_TEST_POSTGRES_URL (only this process's shared sessions are cancelled).
# usage: scripts/attack/speed/cancel-storm.sh ROUNDS SPREAD_US
set -eu
ATK_SPEED_ROUNDS=${1:-2000} ATK_SPEED_SPREAD_US=${2:-5000} \
  cargo test --locked --test it -- attack_speed::cancels --nocapture 2>&1 |
  grep -E '^(rounds|round|errors|    "|test |thread)' 
