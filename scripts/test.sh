#!/bin/sh
# The test command of the README and of CI: install what is needed, then run
# the whole suite (unit, cli, end-to-end under real tcpserver and supervisors).
set -eu
cd "$(dirname "$0")/.."
sh scripts/bootstrap.sh
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
.venv/bin/ruff check supervise_smtp tests bench
.venv/bin/mypy supervise_smtp
