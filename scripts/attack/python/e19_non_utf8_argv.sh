#!/usr/bin/env bash
# finding 13: a Python program given an argument that is not UTF-8 cannot
# take a lock (its recorded command), where the command runs the same one.
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
D=$(mktemp -d)
"$ROOT/target/py-venv/bin/python" -c "import onlyone; onlyone.single_instance('e19', dir='$D'); print('holding')" $'caf\xe9.csv' 2>&1 | tail -2
echo "python: exit ${PIPESTATUS[0]}"
"$ROOT/target/debug/onlyone" run --dir "$D" --name e19 -- echo $'caf\xe9.csv'; echo "command: exit $?"
