#!/bin/sh
# Install what supervise-smtp's demo, tests and benchmarks need on Debian 12,
# then a virtualenv in .venv with the package and its test extras.
# Idempotent: a second run only checks.
set -eu
cd "$(dirname "$0")/.."

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
APT_PACKAGES="ucspi-tcp swaks libnet-ssleay-perl libio-socket-ssl-perl exim4-daemon-light daemontools runit s6 gcc python3-venv procps groff-base openssl prometheus"

missing=
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "bootstrap: installing$missing" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # runit's postinst may try to talk to an init that is not there: harmless.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  # prometheus is here for promtool and a server the tests start themselves; its
  # postinst starts and enables a Prometheus on :9090 where init allows it (not
  # behind a policy-rc.d that says no, as in containers): stop and disable it.
  case " $missing " in
  *" prometheus "*)
    if [ -d /run/systemd/system ]; then
      $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/prometheus ]; then
      $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
      $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
    ;;
  esac
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import supervise_smtp, pytest, hypothesis, aiosmtpd' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
  touch .venv/.installed
fi
# supervise-smtp starts once per connection: make sure its byte code is cached
# even where PYTHONDONTWRITEBYTECODE is set (stale .pyc files are rebuilt here).
.venv/bin/python -m compileall -q supervise_smtp >/dev/null
