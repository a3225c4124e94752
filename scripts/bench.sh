#!/bin/sh
# The benchmark suite (bench/suite.py): supervise-smtp side by side with
# tcpserver -> child directly and with recordio, on localhost.  Installs what
# it needs first (sh scripts/bootstrap.sh).  Extra arguments go to the suite:
# --quick (a few seconds), --reps N, --only banner,data,..., --out DIR.
set -eu
cd "$(dirname "$0")/.."
sh scripts/bootstrap.sh
exec .venv/bin/python bench/suite.py "$@"
