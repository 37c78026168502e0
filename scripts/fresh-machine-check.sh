#!/usr/bin/env bash
# Runs the provisioning half of the README's test command (`scripts/test.sh --provision-only`) the
# way a fresh machine sees it, so that state an earlier run left behind cannot hide a missing step.
#
# usage: scripts/fresh-machine-check.sh        (as root; needs util-linux's unshare)
#
# In a private mount and PID namespace, every place where test.sh or scripts/slurm-local.sh leave
# state is covered with an empty tmpfs: Slurm's config (/etc/slurm) and munge's key (/etc/munge),
# their spool, log and run directories, and a new empty $TSD_HOME. Packages installed earlier stay
# (a fresh machine gets them from apt-get, which test.sh runs when they are missing), but a
# slurm.conf, a munge key, a daemon or a cached model from an earlier run is not there. The daemons
# started inside die with the namespace. The host's own daemons are untouched, but the namespace
# shares the network: run this while no other Slurm listens on this machine (.ci/run runs it first).
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "fresh-machine-check: must run as root (mount namespaces)" >&2; exit 1; }
command -v unshare >/dev/null || { echo "fresh-machine-check: unshare not found (util-linux)" >&2; exit 1; }

if [ "${1:-}" != --inside ]; then
  exec unshare --mount --pid --fork --mount-proc --propagation private "$0" --inside
fi

# Inside the namespace from here on.
hide=(/etc/slurm /etc/munge /var/spool/tsd-slurm /var/log/tsd-slurm /run/tsd-slurm /run/munge
  /var/lib/munge /var/log/munge)
for d in "${hide[@]}"; do
  mkdir -p "$d"
  mount -t tmpfs -o mode=0755 tmpfs "$d"
done
home=$(mktemp -d)
export TSD_HOME="$home/tsd"
echo "fresh-machine-check: empty ${hide[*]}; TSD_HOME=$TSD_HOME"
for d in "${hide[@]}"; do
  if [ -n "$(ls -A "$d")" ]; then
    echo "fresh-machine-check: $d is not empty" >&2
    exit 1
  fi
done
[ ! -e /etc/slurm/slurm.conf ] || exit 1

scripts/test.sh --provision-only
echo "fresh-machine-check: passed"
