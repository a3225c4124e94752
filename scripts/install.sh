#!/bin/sh
# Install supervise-smtp for real (Debian 12 and other Linux): a virtualenv
# per release under the prefix, switched in with one atomic rename, so that
# tcpserver never starts a half-installed program.
#
#   sh scripts/install.sh [--prefix DIR] [--bindir DIR] [--mandir DIR]
#                         [--wheel FILE] [--python PY]
#   sh scripts/install.sh --uninstall [--prefix DIR] [--bindir DIR] [--mandir DIR]
#   sh scripts/install.sh --build-wheels DIR [--python PY]
#
# Defaults: --prefix /opt/supervise-smtp, --bindir /usr/local/bin,
# --mandir /usr/local/share/man.  What it makes (and --uninstall removes):
#
#   PREFIX/releases/VERSION-STAMP/   one virtualenv per install (pip's own
#                                    copy of the package, byte-compiled, o+rX)
#   PREFIX/current -> releases/...   the release in use, swapped atomically
#   PREFIX/.supervise-smtp           marker: this prefix belongs to install.sh
#   PREFIX/.made-dirs                the directories made for the links (removed
#                                    by --uninstall when empty)
#   BINDIR/supervise-smtp     -> PREFIX/current/bin/supervise-smtp
#   MANDIR/man8/supervise-smtp.8 -> PREFIX/current/share/man/man8/...
#   docs: PREFIX/current/share/doc/supervise-smtp/*.md (verdicts.md, ...)
#
# The command is the package's bin/supervise-smtp, whose `#!python` pip
# rewrites to the release's own interpreter: not a console-script wrapper
# (those import `re` first, ~5 ms paid by every SMTP connection).
#
# Every run builds a new release beside the old ones, checks that an
# unprivileged user can run a session with it, then swaps `current`.  The
# release it replaced is kept (connections still running from it import
# modules lazily; `ln -sfn releases/OLD PREFIX/current` goes back to it, in one
# rename with GNU ln); older ones are removed unless a running process still
# uses them (they go on a later run).
#
# Source: this checkout (with network access to PyPI for the dependencies),
# or --wheel FILE: a wheel built with `pip wheel -w DIR .`, installed with
# the other wheels of DIR and nothing from the network (pip --no-index).
# --build-wheels DIR does that `pip wheel` from this checkout and copies this
# script beside the wheels: copy DIR to a host without a checkout or network
# (same architecture and Python version: some wheels are binary) and run
# `sh DIR/install.sh --wheel DIR/supervise_smtp-VERSION-py3-none-any.whl`.
#
# Exit codes: 0 done (or nothing to uninstall); 100 usage error, nothing
# changed; 111 failed, the previous release still current.
set -eu
umask 022

PROG=install.sh
prefix=/opt/supervise-smtp
bindir=/usr/local/bin
mandir=/usr/local/share/man
wheel=
python=
uninstall=
wheelhouse=

synopsis() {
  echo "$PROG: usage: sh scripts/install.sh [--prefix DIR] [--bindir DIR] [--mandir DIR] [--wheel FILE] [--python PY] | --uninstall [--prefix DIR] [--bindir DIR] [--mandir DIR] | --build-wheels DIR [--python PY]"
}
usage() {
  [ $# -eq 0 ] || echo "$PROG: fatal: $*" >&2
  synopsis >&2
  exit 100
}
die() { echo "$PROG: fatal: $*" >&2; exit 111; }
say() { echo "$PROG: $*" >&2; }

need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || usage "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) need_arg "$@"; prefix=$2; shift 2 ;;
    --bindir) need_arg "$@"; bindir=$2; shift 2 ;;
    --mandir) need_arg "$@"; mandir=$2; shift 2 ;;
    --wheel) need_arg "$@"; wheel=$2; shift 2 ;;
    --python) need_arg "$@"; python=$2; shift 2 ;;
    --build-wheels) need_arg "$@"; wheelhouse=$2; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --bindir=*) bindir=${1#*=}; shift ;;
    --mandir=*) mandir=${1#*=}; shift ;;
    --wheel=*) wheel=${1#*=}; shift ;;
    --python=*) python=${1#*=}; shift ;;
    --build-wheels=*) wheelhouse=${1#*=}; shift ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) synopsis; exit 0 ;;
    *) usage "unknown argument: $1" ;;
  esac
done

# Absolute paths without blanks: they end up in #! lines and symlinks.
for d in "$prefix" "$bindir" "$mandir"; do
  case $d in
    /*) ;;
    *) usage "not an absolute path: $d" ;;
  esac
  case $d in
    *[[:space:]]*) usage "a path with blanks would break the #! line: $d" ;;
  esac
done
prefix=${prefix%/}
bindir=${bindir%/}
mandir=${mandir%/}
[ -n "$prefix" ] || usage "--prefix / is not a place for releases"
marker=$prefix/.supervise-smtp
cmd_link=$bindir/supervise-smtp
cmd_target=$prefix/current/bin/supervise-smtp
man_link=$mandir/man8/supervise-smtp.8
man_target=$prefix/current/share/man/man8/supervise-smtp.8

# ours PATH: PATH is a symlink install.sh made (it points into the prefix).
ours() {
  [ -L "$1" ] || return 1
  case $(readlink "$1") in
    "$prefix"/*) return 0 ;;
  esac
  return 1
}

# users DIR: the pids of running processes started from DIR (a release).
# A command started through its #! line has the release's interpreter as
# argv[0], so /proc/PID/cmdline names the release for as long as it runs.
# (Anchored at argv[0], so grep's own command line, which holds the pattern,
# does not count.)
users() {
  pattern=^$(printf '%s/\n' "$1" | sed 's/[][\.*^$]/\\&/g')
  grep -l -a -e "$pattern" /proc/[0-9]*/cmdline 2>/dev/null \
    | sed -n 's,^/proc/\([0-9]*\)/cmdline$,\1,p' | tr '\n' ' ' | sed 's/ $//'
}

# One install.sh at a time per prefix (flock is util-linux, on every Debian).
lock() {
  mkdir -p "$prefix"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$prefix/.lock"
    flock -n 9 || die "another install.sh is working on $prefix"
  fi
}

# --- uninstall --------------------------------------------------------------

if [ -n "$uninstall" ]; then
  [ -z "$wheel$python$wheelhouse" ] || usage "--wheel, --python and --build-wheels make no sense with --uninstall"
  if [ ! -e "$marker" ]; then
    if [ -e "$prefix/releases" ] || [ -L "$prefix/current" ]; then
      die "$prefix was not made by install.sh (no $marker): not touching it"
    fi
    for l in "$cmd_link" "$man_link"; do
      ! ours "$l" || { rm -f "$l"; say "removed $l"; }
    done
    say "nothing installed in $prefix"
    exit 0
  fi
  lock
  busy=$(users "$prefix/releases")
  [ -z "$busy" ] || die "still running from $prefix (pids $busy): stop the service (svc -d, sv down, s6-svc -d) and let its connections end, then run --uninstall again"
  for l in "$cmd_link" "$man_link"; do
    if ours "$l"; then
      rm -f "$l"
      say "removed $l"
    elif [ -e "$l" ] || [ -L "$l" ]; then
      say "left $l alone: not a link into $prefix"
    fi
  done
  if [ -f "$prefix/.made-dirs" ]; then  # what relink made for the links, deepest first
    while IFS= read -r d; do
      [ ! -d "$d" ] || rmdir "$d" 2>/dev/null || say "left $d: not empty"
    done <"$prefix/.made-dirs"
  fi
  rm -rf "$prefix/current" "$prefix/releases" "$prefix"/.current.*
  rm -f "$marker" "$prefix/.lock" "$prefix/.made-dirs"
  rmdir "$prefix" 2>/dev/null || say "left $prefix: it holds files install.sh did not make"
  say "uninstalled from $prefix"
  exit 0
fi

# --- what to install ----------------------------------------------------------

here=$(cd "$(dirname "$0")/.." && pwd)
[ -z "$wheel" ] || [ -z "$wheelhouse" ] || usage "--build-wheels builds from the checkout, not from --wheel"
if [ -n "$wheel" ]; then
  [ -f "$wheel" ] || usage "no such wheel: $wheel"
  case ${wheel##*/} in
    supervise_smtp-*-*.whl) ;;
    *) usage "not a supervise-smtp wheel: $wheel" ;;
  esac
  wheel=$(cd "$(dirname "$wheel")" && pwd)/${wheel##*/}
  version=$(echo "${wheel##*/}" | sed 's/^supervise_smtp-\([^-]*\)-.*/\1/')
elif grep -q '^name = "supervise-smtp"$' "$here/pyproject.toml" 2>/dev/null; then
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/pyproject.toml" | head -n 1)
else
  usage "no checkout at $here: give --wheel FILE (made with install.sh --build-wheels)"
fi
[ -n "$version" ] || die "cannot tell the version to install"

# The interpreter of the virtualenv: the system's, which every user can run
# (a pyenv or per-user Python under a 0700 home is not: checked below).
if [ -z "$python" ]; then
  for p in /usr/bin/python3 /usr/local/bin/python3; do
    if [ -x "$p" ]; then python=$p; break; fi
  done
  [ -n "$python" ] || python=$(command -v python3) || die "no python3: apt-get install python3 python3-venv"
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || die "$python is not Python 3.11 or newer"
"$python" -c 'import ensurepip, venv' 2>/dev/null \
  || die "$python cannot make a virtualenv: apt-get install python3-venv"

# pip itself runs from the wheel that ensurepip would install (python3-venv
# ships it), inside each virtualenv: a release gets no pip or setuptools of
# its own (25 MB and 1,600 files less) and builds in a second, not three.
pip_wheel=$("$python" -c '
import glob, os, sysconfig, ensurepip
dirs = [sysconfig.get_config_var("WHEEL_PKG_DIR"),
        os.path.join(os.path.dirname(ensurepip.__file__), "_bundled")]
found = [sorted(glob.glob(os.path.join(d, "pip-*.whl"))) for d in dirs if d]
print(next((f[-1] for f in found if f), ""))')
[ -n "$pip_wheel" ] || die "no pip wheel for $python's ensurepip: apt-get install python3-venv"
# run_pip VENV ARGS...: pip in that virtualenv.
run_pip() {
  v=$1
  shift
  "$v/bin/python" "$pip_wheel/pip" --disable-pip-version-check --no-input --quiet "$@"
}

work=$(mktemp -d)
rel=
cleanup() {
  rm -rf "$work"
  [ -z "$rel" ] || rm -rf "$rel"  # not swapped in: a partial build goes
}
trap cleanup EXIT
trap 'exit 111' HUP INT TERM

# clean_source: a copy of what the build reads, in $work/src: never build/
# or *.egg-info left in the checkout (stale modules there would end up in the
# wheel), and nothing written into the checkout.
clean_source() {
  mkdir "$work/src"
  for f in pyproject.toml README.md bin docs supervise_smtp setup.cfg setup.py MANIFEST.in LICENSE; do
    [ ! -e "$here/$f" ] || cp -R "$here/$f" "$work/src/"
  done
  find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
}

# --- --build-wheels: the wheels for an offline install ----------------------------

if [ -n "$wheelhouse" ]; then
  mkdir -p "$wheelhouse"
  clean_source
  "$python" -m venv --without-pip "$work/venv" || die "python -m venv failed"
  run_pip "$work/venv" wheel -w "$wheelhouse" "$work/src" \
    || die "pip wheel failed (it needs PyPI for the dependencies)"
  cp "$0" "$wheelhouse/install.sh"
  chmod -R go+rX "$wheelhouse"
  say "wheels and install.sh in $wheelhouse; on the target host:"
  say "  sh $wheelhouse/install.sh --wheel $wheelhouse/$(cd "$wheelhouse" && ls supervise_smtp-"$version"-*.whl | head -n 1)"
  exit 0
fi

# Fail before building when a link would clobber a file that is not ours.
for l in "$cmd_link" "$man_link"; do
  if { [ -e "$l" ] || [ -L "$l" ]; } && ! ours "$l"; then
    die "$l exists and is not install.sh's: remove it (pip uninstall supervise-smtp?) or give another --bindir/--mandir"
  fi
done

lock
[ -e "$marker" ] || [ ! -e "$prefix/releases" ] \
  || die "$prefix/releases exists but $prefix was not made by install.sh"
echo "supervise-smtp releases, made by scripts/install.sh; remove with install.sh --uninstall" >"$marker"
mkdir -p "$prefix/releases"

# --- build the new release beside the old ones ----------------------------------

stamp=$(date -u +%Y%m%dT%H%M%SZ)
name=$version-$stamp
n=1
while ! mkdir "$prefix/releases/$name" 2>/dev/null; do
  [ -d "$prefix/releases/$name" ] || die "cannot create $prefix/releases/$name"
  name=$version-$stamp.$n
  n=$((n + 1))
done
rel=$prefix/releases/$name

say "building $rel with $python"
"$python" -m venv --without-pip "$rel" || die "python -m venv failed"
if [ -n "$wheel" ]; then
  run_pip "$rel" install --no-index --find-links "$(dirname "$wheel")" "$wheel" \
    || die "pip could not install $wheel with the wheels beside it (make them with install.sh --build-wheels DIR)"
else
  clean_source
  run_pip "$rel" install "$work/src" || die "pip install failed (it needs PyPI for the dependencies; offline: --wheel)"
fi

# Byte-compiled (qmaild cannot write __pycache__, and every connection would
# compile again), world-readable, nobody but root writing.
site=$("$rel/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
"$rel/bin/python" -m compileall -q "$site" >/dev/null || die "compileall failed in $site"
chmod -R go+rX,go-w "$rel"
[ -x "$rel/bin/supervise-smtp" ] || die "the package put no bin/supervise-smtp in $rel"
head -n 1 "$rel/bin/supervise-smtp" | grep -q "^#!$rel/bin/python" \
  || die "$rel/bin/supervise-smtp does not start with #!$rel/bin/python"

# A real session as an unprivileged user, from /: what qmaild will do.  The
# command is started by a shell running as that user (setpriv's own exec of
# it was seen to pass where the user's could not: under a 0700 /root).
cd /
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1; then
  as_nobody="setpriv --reuid=65534 --regid=65534 --clear-groups"
else
  as_nobody=
fi
# shellcheck disable=SC2086,SC2016
if ! $as_nobody /bin/sh -c 'exec "$@"' sh "$rel/bin/supervise-smtp" -- true \
    </dev/null >/dev/null 2>"$work/smoke"; then
  cat "$work/smoke" >&2
  die "the new release does not run${as_nobody:+ as an unprivileged user} (is $python, and every directory above it and above $prefix, readable and searchable by all?)"
fi
grep -q '^event=summary .*verdict=' "$work/smoke" || die "the new release wrote no summary line: $(cat "$work/smoke")"

# --- swap it in ------------------------------------------------------------------

# relink TARGET LINK: LINK points at TARGET, replaced in one rename(2).  The
# directories made for LINK on the way (MANDIR/man8...) are listed in
# PREFIX/.made-dirs, deepest first, for --uninstall to remove when empty.
relink() {
  if [ -L "$2" ] && [ "$(readlink "$2")" = "$1" ]; then
    return 0
  fi
  d=$(dirname "$2")
  while [ ! -d "$d" ]; do
    printf '%s\n' "$d" >>"$prefix/.made-dirs"
    d=$(dirname "$d")
  done
  mkdir -p "$(dirname "$2")"
  rm -f "$2.install-tmp"
  ln -s "$1" "$2.install-tmp"
  mv -T "$2.install-tmp" "$2"
}

old=
[ ! -L "$prefix/current" ] || old=$(readlink "$prefix/current")
old=${old##*/}
relink "releases/$name" "$prefix/current"
keep=$rel
rel=  # swapped in: the cleanup must not remove it
say "current -> releases/$name"
relink "$cmd_target" "$cmd_link"
relink "$man_target" "$man_link"

# Keep the release just replaced; remove the older ones nobody runs.
for d in "$prefix"/releases/*; do
  [ -d "$d" ] || continue
  [ "$d" != "$keep" ] && [ "${d##*/}" != "$old" ] || continue
  busy=$(users "$d")
  if [ -n "$busy" ]; then
    say "kept ${d##*/}: still running (pids $busy); a later install removes it"
  else
    rm -rf "$d"
    say "removed ${d##*/}"
  fi
done
if [ -n "$old" ] && [ -d "$prefix/releases/$old" ]; then
  say "kept the previous release, $old (to go back: ln -sfn releases/$old $prefix/current)"
  busy=$(users "$prefix/releases/$old")
  [ -z "$busy" ] || say "still running from $old (pids $busy): a resident supervise-smtp serve keeps it until restarted (svc -t, sv restart, s6-svc -r)"
fi
say "installed supervise-smtp $version: $cmd_link; man page $man_link; docs in $prefix/current/share/doc/supervise-smtp"
