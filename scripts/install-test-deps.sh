#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine (run as root):
# OpenSSH server and client, the pipeline tools syncoid uses, and Debian's
# syncoid 2.1 *without* its zfs dependency (the sanoid package pulls in
# zfs-fuse, an ancient real ZFS whose zfs would shadow the emulator), which
# is unpacked to /opt/sanoid; iproute2 and nftables for ../shared/netlab
# (installed here so parallel labs never race for apt). Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(openssh-server openssh-client mbuffer pv lzop zstd lz4 pigz xz-utils gzip
      libcapture-tiny-perl libconfig-inifiles-perl procps tmux socat busybox
      iproute2 nftables netcat-openbsd python3-prometheus-client)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ ! -x /opt/sanoid/usr/sbin/syncoid ]; then
  apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -x /opt/sanoid/usr/sbin/syncoid ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download sanoid >/dev/null 2>&1)
  mkdir -p /opt/sanoid
  dpkg -x "$tmp"/sanoid_*.deb /opt/sanoid
  rm -rf "$tmp"
fi
mkdir -p /run/sshd
echo "test dependencies ready: syncoid at /opt/sanoid/usr/sbin/syncoid"
