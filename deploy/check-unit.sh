#!/usr/bin/env bash
# Checks deploy/vgpud.service with `systemd-analyze verify` the way it will run: installed
# in a scratch root with the built vgpud at the ExecStart path, /bin/kill for ExecReload and
# the host's own system units (sysinit.target, …) beside it, so that every command path
# and dependency resolves. verify exits 0 even for an unknown key or a value it cannot
# parse (it only warns, and systemd would ignore the line), so any output fails the check.
# Then `systemd-analyze security` must rate the unit's exposure at most $MAX_EXPOSURE.
#
# Usage: deploy/check-unit.sh [path/to/vgpud]   (default target/release/vgpud)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
unit=deploy/vgpud.service
vgpud="${1:-target/release/vgpud}"
MAX_EXPOSURE="${MAX_EXPOSURE:-3.0}"

[ -x "$vgpud" ] || { echo "check-unit: no vgpud binary at $vgpud (cargo build --release -p vgpu-mediator)"; exit 1; }
command -v systemd-analyze >/dev/null || { echo "check-unit: systemd-analyze missing (apt-get install systemd)"; exit 1; }

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
# The paths the unit names, each checked to be the one the unit names.
exec_start="$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")"
exec_reload="$(sed -n 's/^ExecReload=\([^ ]*\).*/\1/p' "$unit")"
[ "$exec_start" = /usr/local/bin/vgpud ] || { echo "check-unit: ExecStart is $exec_start, the docs install /usr/local/bin/vgpud"; exit 1; }
install -D -m 0755 "$vgpud" "$root$exec_start"
install -D -m 0755 "$exec_reload" "$root$exec_reload"
install -D -m 0644 "$unit" "$root/etc/systemd/system/vgpud.service"
install -D -m 0644 deploy/libvirt/vgpud.toml "$root/etc/vgpu/vgpud.toml"
mkdir -p "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"

echo "check-unit: systemd-analyze verify --root=<scratch> vgpud.service ($(systemd-analyze --version | head -n1))"
out="$(systemd-analyze verify --root="$root" vgpud.service 2>&1)" || { echo "$out"; echo "check-unit: FAILED (verify exit status)"; exit 1; }
if [ -n "$out" ]; then
    echo "$out"
    echo "check-unit: FAILED (systemd-analyze verify warned)"
    exit 1
fi
echo "check-unit: verify: no warnings"

# The config the unit starts vgpud with must be valid for this vgpud.
"$root$exec_start" --config "$root/etc/vgpu/vgpud.toml" --check

exposure="$(systemd-analyze security --offline=yes --root="$root" vgpud.service 2>&1 | sed -n 's/.*Overall exposure level for vgpud.service: \([0-9.]*\).*/\1/p')"
[ -n "$exposure" ] || { echo "check-unit: systemd-analyze security gave no exposure level"; exit 1; }
echo "check-unit: systemd-analyze security: exposure $exposure (at most $MAX_EXPOSURE)"
awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }' || { echo "check-unit: FAILED (exposure $exposure > $MAX_EXPOSURE)"; exit 1; }
echo "check-unit: OK"
