#!/usr/bin/env bash
# Builds the Debian package: target/debian/syncoid-rsync_VERSION_ARCH.deb
# with the static binary (scripts/build-release.sh), its man page and
# bash/zsh/fish completions (generated from the same definitions as
# --help), the README, and an example systemd service and timer under
# /usr/share/doc/syncoid-rsync/examples (examples only: installing the
# package starts and schedules nothing). Prints the .deb's path.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v dpkg-deb >/dev/null || { echo "package.sh: dpkg-deb is needed (apt install dpkg)" >&2; exit 1; }
out=$(bash scripts/build-release.sh)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
root=$(mktemp -d); trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
sr=$out/syncoid-rsync
doc=$root/usr/share/doc/syncoid-rsync
install -D -m 0755 "$sr" "$root/usr/bin/syncoid-rsync"
install -d "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d" "$doc/examples"
"$sr" --generate man | gzip -9n > "$root/usr/share/man/man1/syncoid-rsync.1.gz"
"$sr" --generate bash > "$root/usr/share/bash-completion/completions/syncoid-rsync"
"$sr" --generate zsh > "$root/usr/share/zsh/vendor-completions/_syncoid-rsync"
"$sr" --generate fish > "$root/usr/share/fish/vendor_completions.d/syncoid-rsync.fish"
install -m 0644 README.md "$doc/README.md"
cat > "$doc/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: syncoid-rsync
License: GPL-3.0-or-later
 On Debian systems, the full text of the GNU General Public License
 version 3 can be found in /usr/share/common-licenses/GPL-3.
EOF
cat > "$doc/examples/syncoid-rsync.service" <<'EOF'
# Example: copy to /etc/systemd/system/, edit SOURCE and TARGET, then
# `systemctl enable --now syncoid-rsync.timer`.
[Unit]
Description=Replicate ZFS datasets with syncoid-rsync
After=network-online.target zfs.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/usr/bin/syncoid-rsync -r --rsync --inactivity-timeout=6h \
  --metrics-file=/var/lib/prometheus/node-exporter/syncoid-rsync.prom \
  tank/data root@backup:pool/data
EOF
cat > "$doc/examples/syncoid-rsync.timer" <<'EOF'
# Example: runs the service of the same name hourly; a run started while
# the previous one still transfers finds that dataset busy and leaves it.
[Unit]
Description=Hourly ZFS replication with syncoid-rsync

[Timer]
OnCalendar=hourly
Persistent=true

[Install]
WantedBy=timers.target
EOF
size=$(du -k -s "$root" | cut -f1)
install -d "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<EOF
Package: syncoid-rsync
Version: $version
Architecture: $arch
Maintainer: syncoid-rsync developers <syncoid-rsync@localhost>
Installed-Size: $size
Depends: openssh-client
Recommends: zfsutils-linux
Suggests: mbuffer, pv, lzop
Section: admin
Priority: optional
Description: ZFS replication with syncoid's command line, surviving outages
 syncoid-rsync replicates ZFS datasets between hosts (zfs send and zfs
 receive, full, incremental and resumable, over OpenSSH). It takes the
 command line of syncoid (from the sanoid project), so it can replace
 syncoid in a cron job. With --rsync the stream travels as numbered,
 checksummed chunks between agents on both hosts, so a transfer survives
 its connection dying, network outages and restarts of the command.
EOF
mkdir -p target/debian
deb=target/debian/syncoid-rsync_${version}_${arch}.deb
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
