#!/usr/bin/env bash
# (It is read from standard input by `bash -s`: a command in it that reads
# standard input, such as ssh without -n, would swallow the rest of it.)
# The end-to-end suite on REAL OpenZFS (runs inside the zfsvm guest, as
# root, with syncoid-rsync at /usr/local/bin). File-backed pools vsrc and
# vdst are created fresh. Every case checks the target's data (sha256 of
# every file) and its snapshot list. Prints PASS/FAIL per case and
# "N passed, N failed" at the end; exits non-zero if any case failed.
set -u
export LC_ALL=C
SR=${SR:-/usr/local/bin/syncoid-rsync}
pass=0; fail=0; failed=()
log=/var/tmp/vm-suite.log; : > "$log"

setup_pools() {
  for p in vsrc vdst; do zpool destroy -f "$p" >/dev/null 2>&1 || true; done
  rm -f /var/tmp/vsrc.img /var/tmp/vdst.img
  truncate -s 1G /var/tmp/vsrc.img /var/tmp/vdst.img
  zpool create -f -O mountpoint=/vsrc vsrc /var/tmp/vsrc.img
  zpool create -f -O mountpoint=/vdst vdst /var/tmp/vdst.img
}
hashes() { (cd "$(zfs get -H -o value mountpoint "$1")" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum); }
snaps() { zfs list -H -t snapshot -o name -s createtxg -d 1 "$1" | sed 's/.*@//' | tr '\n' ' '; }
guids() { zfs list -H -p -t snapshot -o name,guid -d 1 "$1" | sed 's/^[^@]*@//' | sort; }
same_data() { [ "$(hashes "$1")" = "$(hashes "$2")" ] || { echo "data differs: $1 vs $2"; return 1; }; }
same_guids() {  # every target snapshot has the source's guid
  local s; s=$(guids "$1")
  while read -r line; do grep -qxF "$line" <<<"$s" || { echo "guid mismatch: $line"; return 1; }; done < <(guids "$2")
}
sr() { echo "+ syncoid-rsync $*" >>"$log"; "$SR" "$@" >>"$log" 2>&1; }
case_() {  # name, function; set -e holds in the subshell (not inside an `if`)
  local rc
  # ONLY=GLOB runs the matching cases alone (while working on one).
  case "$1" in ${ONLY:-*}) ;; *) return 0;; esac
  echo "=== $1" >>"$log"
  ( set -e; "$2" ) >>"$log" 2>&1; rc=$?
  if [ "$rc" = 0 ]; then pass=$((pass+1)); echo "PASS $1"
  else fail=$((fail+1)); failed+=("$1"); echo "FAIL $1"; fi
}
rand() { head -c "$2" /dev/urandom > "$1"; }

t_full_and_incremental() {
  zfs create vsrc/data; rand /vsrc/data/a 3000000; mkdir /vsrc/data/d; echo hi > /vsrc/data/d/b
  zfs snapshot vsrc/data@first
  sr vsrc/data vdst/data
  same_data vsrc/data vdst/data; same_guids vsrc/data vdst/data
  [ "$(snaps vdst/data | wc -w)" = 2 ]
  rand /vsrc/data/c 1000000; sleep 1
  sr vsrc/data vdst/data
  same_data vsrc/data vdst/data; same_guids vsrc/data vdst/data
  [ "$(snaps vdst/data | grep -o 'syncoid_' | wc -l)" = 1 ]
}
t_recursive_with_clone() {
  zfs create vsrc/tree; rand /vsrc/tree/t 200000; zfs create vsrc/tree/kid; rand /vsrc/tree/kid/k 100000
  zfs snapshot -r vsrc/tree@r1
  zfs clone vsrc/tree@r1 vsrc/tree/cl; echo clone > /vsrc/tree/cl/only
  sr -r vsrc/tree vdst/tree
  same_data vsrc/tree/kid vdst/tree/kid; same_data vsrc/tree/cl vdst/tree/cl
  [ "$(zfs get -H -o value origin vdst/tree/cl)" = "vdst/tree@r1" ]
}
t_bookmark_fallback() {
  zfs create vsrc/bm; rand /vsrc/bm/f 100000; zfs snapshot vsrc/bm@0
  sr --no-sync-snap vsrc/bm vdst/bm
  zfs bookmark vsrc/bm@0 vsrc/bm#0; zfs destroy vsrc/bm@0
  rand /vsrc/bm/g 100000; zfs snapshot vsrc/bm@mid; rand /vsrc/bm/h 100000
  sr vsrc/bm vdst/bm
  same_data vsrc/bm vdst/bm
  snaps vdst/bm | grep -q '^0 mid syncoid_'
}
t_create_bookmark_and_hold() {
  zfs create vsrc/hb; rand /vsrc/hb/f 10000; zfs snapshot vsrc/hb@s1
  sr --no-sync-snap --create-bookmark vsrc/hb vdst/hb
  zfs list -H -t bookmark -o name vsrc/hb | grep -qx 'vsrc/hb#s1'
  sr --use-hold vsrc/hb vdst/hb2
  new=$(snaps vsrc/hb | tr ' ' '\n' | grep syncoid_ | tail -1)
  zfs holds -H "vsrc/hb@$new" | grep -q syncoid_
  zfs holds -H "vdst/hb2@$new" | grep -q syncoid_
}
t_resume_after_head() {
  zfs create vsrc/res; rand /vsrc/res/big 30000000; zfs snapshot vsrc/res@s1
  zfs send vsrc/res@s1 | head --bytes=8M | zfs receive -s vdst/res || true
  zfs get -H -o value receive_resume_token vdst/res | grep -q '^1-'
  sr --no-stream --no-sync-snap vsrc/res vdst/res
  grep -q "Resuming interrupted" "$log"
  [ "$(zfs get -H -o value receive_resume_token vdst/res)" = "-" ]
  same_data vsrc/res vdst/res
}
t_raw_encrypted() {
  echo secretsecret | zfs create -o encryption=on -o keyformat=passphrase -o keylocation=prompt vsrc/enc
  rand /vsrc/enc/secret 200000; zfs snapshot vsrc/enc@e1
  sr --sendoptions=w --no-sync-snap vsrc/enc vdst/enc
  [ "$(zfs get -H -o value encryption vdst/enc)" = "aes-256-gcm" ]
  [ "$(zfs get -H -o value keystatus vdst/enc)" = "unavailable" ]
  echo secretsecret | zfs load-key vdst/enc; zfs mount vdst/enc
  same_data vsrc/enc vdst/enc
}
t_force_delete_guardrails() {
  zfs create vsrc/fd; rand /vsrc/fd/f 10000; zfs snapshot vsrc/fd@s1
  zfs create vdst/fd; echo mine > /vdst/fd/precious; zfs snapshot vdst/fd@mine
  if sr vsrc/fd vdst/fd; then echo "unrelated target accepted"; return 1; fi
  [ "$(cat /vdst/fd/precious)" = mine ]
  zfs snapshot vdst@rootsnap
  if sr --force-delete vsrc/fd vdst; then echo "pool root replaced"; return 1; fi
  zfs list vdst >/dev/null
  sr --force-delete vsrc/fd vdst/fd
  same_data vsrc/fd vdst/fd
  [ ! -e /vdst/fd/precious ]
}
t_modified_target_rollback() {
  zfs create vsrc/mod; rand /vsrc/mod/f 10000
  sr vsrc/mod vdst/mod
  echo stray > /vdst/mod/stray
  if sr --no-rollback vsrc/mod vdst/mod; then echo "diverged target accepted"; return 1; fi
  [ -e /vdst/mod/stray ]
  sleep 1; sr vsrc/mod vdst/mod
  [ ! -e /vdst/mod/stray ]; same_data vsrc/mod vdst/mod
}

t_rsync_local() {
  zfs create vsrc/rs; rand /vsrc/rs/big 20000000; rand /vsrc/rs/small 1000; zfs snapshot vsrc/rs@s1
  sr --rsync --chunk-size=1M vsrc/rs vdst/rs
  same_data vsrc/rs vdst/rs; same_guids vsrc/rs vdst/rs
  grep -q -- "--rsync: .* received and verified" "$log"
  [ -z "$(ls -d /tmp/syncoid-rsync-[0-9a-f]* 2>/dev/null)" ]
  rand /vsrc/rs/more 500000; sleep 1
  sr --rsync vsrc/rs vdst/rs
  same_data vsrc/rs vdst/rs
}

# --rsync fault cases: 40 MB at --source-bwlimit=4M (10 s) leaves time to
# break things mid-transfer.
agents() { "$SR" agent list | grep -c '"alive":true' || true; }
agent_pid() { "$SR" agent list | grep "\"role\":\"$1\"" | sed -n 's/.*"pid":\([0-9]*\).*/\1/p' | head -1; }
wait_for() {  # seconds, condition
  local i; for i in $(seq 1 "$1"); do eval "$2" && return 0; sleep 1; done
  echo "timed out waiting for: $2"; return 1
}
no_sessions() { [ -z "$(ls -d /tmp/syncoid-rsync-[0-9a-f]* 2>/dev/null)" ] || { ls -la /tmp; return 1; }; }
t_rsync_ssh_killed() {
  mkdir -p /root/.ssh; chmod 700 /root/.ssh
  [ -f /root/.ssh/id_vm ] || ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_vm
  grep -qF "$(cat /root/.ssh/id_vm.pub)" /root/.ssh/authorized_keys 2>/dev/null || cat /root/.ssh/id_vm.pub >> /root/.ssh/authorized_keys
  zfs create vsrc/rk; rand /vsrc/rk/big 40000000; zfs snapshot vsrc/rk@s1
  echo "+ syncoid-rsync --rsync ... root@localhost:vdst/rk (agent connections killed)"
  "$SR" --rsync --compress=none --source-bwlimit=4M --no-sync-snap --sshkey /root/.ssh/id_vm \
    --sshoption StrictHostKeyChecking=accept-new vsrc/rk root@localhost:vdst/rk &
  local pid=$! kills=0 i p
  # Every 2 s until three connections were killed (on a loaded machine
  # the agents' start can take most of the first rounds), while it runs.
  for i in $(seq 1 15); do
    sleep 2
    kill -0 "$pid" 2>/dev/null || break
    for p in $(pgrep -P "$pid" -f 'agent bridge|agent start .*--attach'); do kill -9 "$p"; kills=$((kills+1)); done
    [ "$kills" -ge 3 ] && break
  done
  wait "$pid"
  echo "killed $kills ssh connections"; [ "$kills" -ge 2 ]
  grep -q "link to the agents lost" "$log"
  same_data vsrc/rk vdst/rk; same_guids vsrc/rk vdst/rk
  wait_for 10 '[ "$(agents)" = 0 ]'; no_sessions
}
# --streams on real OpenZFS: a push to this host through sshd over four
# connections, all of them killed once mid-stream (the round is made again
# and resumes at the receiver), then an incremental over three locally.
t_rsync_streams() {
  mkdir -p /root/.ssh; chmod 700 /root/.ssh
  [ -f /root/.ssh/id_vm ] || ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_vm
  grep -qF "$(cat /root/.ssh/id_vm.pub)" /root/.ssh/authorized_keys 2>/dev/null || cat /root/.ssh/id_vm.pub >> /root/.ssh/authorized_keys
  zfs create vsrc/st; rand /vsrc/st/big 40000000; rand /vsrc/st/small 1000; zfs snapshot vsrc/st@s1
  echo "+ syncoid-rsync --rsync --streams=4 ... root@localhost:vdst/st (connections killed once)"
  "$SR" --rsync --streams=4 --compress=none --source-bwlimit=4M --no-sync-snap --sshkey /root/.ssh/id_vm \
    --sshoption StrictHostKeyChecking=accept-new vsrc/st root@localhost:vdst/st >>"$log" 2>&1 &
  local pid=$! kills=0 i p
  for i in $(seq 1 15); do
    sleep 2
    kill -0 "$pid" 2>/dev/null || break
    local links; links=$(pgrep -P "$pid" -f 'agent bridge|agent start .*--attach' || true)
    [ "$(echo "$links" | grep -c .)" -ge 4 ] || continue
    for p in $links; do kill -9 "$p"; kills=$((kills+1)); done
    break
  done
  wait "$pid"
  echo "killed $kills ssh connections"; [ "$kills" -ge 4 ]
  grep -q "link to the agents lost" "$log"
  grep -q "over 4 connections, each carried" "$log"
  same_data vsrc/st vdst/st; same_guids vsrc/st vdst/st
  wait_for 10 '[ "$(agents)" = 0 ]'; no_sessions
  rand /vsrc/st/more 500000; zfs snapshot vsrc/st@s2
  sr --rsync --streams=3 --no-sync-snap vsrc/st vdst/st
  same_data vsrc/st vdst/st; same_guids vsrc/st vdst/st; no_sessions
}
t_rsync_coordinator_killed() {
  zfs create vsrc/rc; rand /vsrc/rc/big 40000000; zfs snapshot vsrc/rc@s1
  local args=(--rsync --compress=none --source-bwlimit=4M --no-sync-snap vsrc/rc vdst/rc)
  "$SR" "${args[@]}" & local pid=$!
  wait_for 20 '[ "$(agents)" = 2 ]'; sleep 3
  kill -9 "$pid"; wait "$pid" || true
  [ "$(agents)" = 2 ] || { echo "the agents did not outlive their coordinator"; return 1; }
  sr "${args[@]}"
  grep -q "re-attaching to the live agents" "$log"
  ! grep -q "Resuming interrupted" "$log"
  same_data vsrc/rc vdst/rc; same_guids vsrc/rc vdst/rc
  wait_for 10 '[ "$(agents)" = 0 ]'; no_sessions
}
# -r --jobs: a tree of 12 datasets (a clone among them) with --jobs 4 and
# --atomic-sync-snap: every dataset identical, the clone a clone, and the
# sync snapshots of the whole tree taken in one transaction group (one
# createtxg: real ZFS's atomicity, not the emulator's).
t_jobs_tree_atomic() {
  zfs create vsrc/jt; rand /vsrc/jt/t 100000
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    zfs create "vsrc/jt/d$i"; rand "/vsrc/jt/d$i/f" $((i * 300000))
    [ "$i" -le 3 ] && { zfs create "vsrc/jt/d$i/kid"; rand "/vsrc/jt/d$i/kid/k" 200000; }
  done
  zfs snapshot -r vsrc/jt@r1
  zfs clone vsrc/jt/d2@r1 vsrc/jt/cl; echo clone > /vsrc/jt/cl/only
  sr -r --jobs=4 --atomic-sync-snap vsrc/jt vdst/jt
  for fs in $(zfs list -H -o name -r vsrc/jt); do
    same_data "$fs" "vdst/${fs#vsrc/}"; same_guids "$fs" "vdst/${fs#vsrc/}"
  done
  [ "$(zfs get -H -o value origin vdst/jt/cl)" = "vdst/jt/d2@r1" ]
  grep -q "took sync snapshot .* of 15 datasets at once" "$log"
  [ "$(zfs list -H -p -t snapshot -o name,createtxg -r vsrc/jt | grep '@syncoid_' | awk '{print $2}' | sort -u | wc -l)" = 1 ]
  # An incremental with more datasets at once than the tree has.
  rand /vsrc/jt/d5/more 500000
  sr -r --jobs=20 vsrc/jt vdst/jt
  same_data vsrc/jt/d5 vdst/jt/d5
  # The first run's sync snapshots were pruned at the end of the second,
  # in one call per host: each dataset keeps only its newest, both sides.
  local fs n
  for fs in $(zfs list -H -o name -r vsrc/jt) $(zfs list -H -o name -r vdst/jt); do
    n=$(zfs list -H -t snapshot -o name -d 1 "$fs" | grep -c '@syncoid_' || true)
    [ "$n" = 1 ] || { echo "$fs has $n sync snapshots"; return 1; }
  done
}
# -r --rsync --jobs 3: the coordinator killed while three 20 MB datasets are
# in flight; the same command again re-attaches to every transfer and none
# starts over.
t_rsync_jobs_coordinator_killed() {
  zfs create vsrc/rj; zfs snapshot vsrc/rj@s1
  local i
  for i in 1 2 3; do zfs create "vsrc/rj/d$i"; rand "/vsrc/rj/d$i/big" 20000000; zfs snapshot "vsrc/rj/d$i@s1"; done
  local args=(-r --rsync --jobs=3 --compress=none --source-bwlimit=6M --no-sync-snap vsrc/rj vdst/rj)
  "$SR" "${args[@]}" >>"$log" 2>&1 & local pid=$!
  wait_for 30 '[ "$(agents)" = 6 ]'; sleep 2
  kill -9 "$pid"; wait "$pid" || true
  [ "$(agents)" = 6 ] || { echo "the agents did not outlive their coordinator"; return 1; }
  : > /var/tmp/rj.log
  "$SR" "${args[@]}" > /var/tmp/rj.log 2>&1
  cat /var/tmp/rj.log
  [ "$(grep -c "re-attaching to the live agents" /var/tmp/rj.log)" = 3 ]
  ! grep -q "Resuming interrupted" /var/tmp/rj.log
  for i in 1 2 3; do same_data "vsrc/rj/d$i" "vdst/rj/d$i"; same_guids "vsrc/rj/d$i" "vdst/rj/d$i"; done
  wait_for 10 '[ "$(agents)" = 0 ]'; no_sessions
}
# -r --rsync --jobs 2 to this host through sshd: each thread starts its
# transfers' agents through one host agent (`agent host`, one ssh session)
# instead of an ssh session each; the host agents killed while two 20 MB
# datasets are in flight end no transfer (each goes on over a bridge of
# its own, none starts over), and none is left after the run.
t_rsync_tree_host_agent() {
  mkdir -p /root/.ssh; chmod 700 /root/.ssh
  [ -f /root/.ssh/id_vm ] || ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_vm
  grep -qF "$(cat /root/.ssh/id_vm.pub)" /root/.ssh/authorized_keys 2>/dev/null || cat /root/.ssh/id_vm.pub >> /root/.ssh/authorized_keys
  zfs create vsrc/rh; zfs snapshot vsrc/rh@s1
  local i
  for i in 1 2 3 4; do zfs create "vsrc/rh/d$i"; rand "/vsrc/rh/d$i/big" 20000000; zfs snapshot "vsrc/rh/d$i@s1"; done
  echo "+ syncoid-rsync -r --rsync --jobs=2 ... root@localhost:vdst/rh (host agents killed)"
  "$SR" -r --rsync --jobs=2 --compress=none --source-bwlimit=8M --no-sync-snap --link-timeout=3s \
    --sshkey /root/.ssh/id_vm --sshoption StrictHostKeyChecking=accept-new vsrc/rh root@localhost:vdst/rh &
  local pid=$!
  wait_for 30 '[ "$(agents)" -ge 4 ]'; sleep 2
  pgrep -f 'syncoid-rsync agent host' >/dev/null || { echo "no host agent runs"; return 1; }
  pkill -9 -f 'syncoid-rsync agent host'
  wait "$pid"
  grep -q "link to the agents lost" "$log"
  ! grep -q "Resuming interrupted" "$log"
  for i in 1 2 3 4; do same_data "vsrc/rh/d$i" "vdst/rh/d$i"; same_guids "vsrc/rh/d$i" "vdst/rh/d$i"; done
  wait_for 10 '[ "$(agents)" = 0 ]'; no_sessions
  wait_for 10 '! pgrep -f "syncoid-rsync agent host" >/dev/null'
}
t_rsync_receiver_killed() {
  zfs create vsrc/rr; rand /vsrc/rr/big 40000000; zfs snapshot vsrc/rr@s1
  local args=(--rsync --compress=none --source-bwlimit=4M --no-sync-snap vsrc/rr vdst/rr)
  "$SR" "${args[@]}" & local pid=$!
  wait_for 20 '[ "$(agents)" = 2 ]'; sleep 4
  kill -9 "$pid"; wait "$pid" || true
  kill -9 "$(agent_pid receive)"
  wait_for 20 'zfs get -H -o value receive_resume_token vdst/rr | grep -q "^1-"'
  sr "${args[@]}"
  grep -q "stopping its sender" "$log"
  grep -q "Resuming interrupted zfs send/receive" "$log"
  [ "$(zfs get -H -o value receive_resume_token vdst/rr)" = "-" ]
  same_data vsrc/rr vdst/rr; same_guids vsrc/rr vdst/rr
  wait_for 10 '[ "$(agents)" = 0 ]'; no_sessions
}
t_rsync_receiver_gone_in_run() {  # the coordinator lives on and resumes by itself
  zfs create vsrc/rg; rand /vsrc/rg/big 40000000; zfs snapshot vsrc/rg@s1
  local args=(--rsync --compress=none --source-bwlimit=4M --no-sync-snap vsrc/rg vdst/rg)
  local out=/var/tmp/rg.out
  echo "+ syncoid-rsync ${args[*]} (receiver agent killed mid-way)" >>"$log"
  "$SR" "${args[@]}" >"$out" 2>&1 & local pid=$!
  wait_for 20 '[ "$(agents)" = 2 ]'; sleep 4
  kill -9 "$(agent_pid receive)"
  local rc=0; wait "$pid" || rc=$?
  cat "$out" >>"$log"; [ "$rc" = 0 ]
  grep -q "the receiver agent on local machine is gone" "$out"
  grep -q "Resuming interrupted zfs send/receive" "$out"
  [ "$(zfs get -H -o value receive_resume_token vdst/rg)" = "-" ]
  same_data vsrc/rg vdst/rg; same_guids vsrc/rg vdst/rg
  wait_for 10 '[ "$(agents)" = 0 ]'; no_sessions
}

# A non-root backup user over ssh whose sudo rule allows zfs only (not
# `true`), in a non-login session whose PATH lacks /usr/sbin: standard
# push, --rsync push and --rsync pull (vm-e2e.sh installs sudo's package).
t_sudo_zfs_only_user() {
  command -v sudo >/dev/null || { echo "sudo is not installed in the guest"; return 1; }
  # (Debian has a system user "backup" already.) '*': no password, but not
  # locked ('!'), which sshd would refuse.
  id zbackup >/dev/null 2>&1 || useradd -m -s /bin/bash -p '*' zbackup
  mkdir -p /root/.ssh; chmod 700 /root/.ssh
  [ -f /root/.ssh/id_vm ] || ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_vm
  install -d -m 700 -o zbackup -g zbackup /home/zbackup/.ssh
  install -m 600 -o zbackup -g zbackup /root/.ssh/id_vm.pub /home/zbackup/.ssh/authorized_keys
  echo 'zbackup ALL=(root) NOPASSWD: /usr/sbin/zfs' > /etc/sudoers.d/zbackup; chmod 440 /etc/sudoers.d/zbackup
  ! sudo -n -u zbackup sudo -n true 2>/dev/null || { echo "the rule allows more than zfs"; return 1; }
  # Debian 12's zfsutils also links /usr/bin/zfs; other systems have zfs
  # in the sbin directories only. Put the link aside for this case.
  if [ -L /usr/bin/zfs ]; then mv /usr/bin/zfs /usr/bin/zfs.aside; trap 'mv /usr/bin/zfs.aside /usr/bin/zfs' EXIT; fi
  local ssh=(--sshkey /root/.ssh/id_vm --sshoption StrictHostKeyChecking=accept-new)
  [ -z "$(ssh -n -i /root/.ssh/id_vm -o StrictHostKeyChecking=accept-new zbackup@localhost 'command -v zfs')" ] \
    || { echo "zfs is in the session's PATH: not the case under test"; return 1; }
  zfs create vsrc/su; rand /vsrc/su/f 3000000; zfs snapshot vsrc/su@s1
  sr "${ssh[@]}" vsrc/su zbackup@localhost:vdst/su
  same_data vsrc/su vdst/su; same_guids vsrc/su vdst/su
  sr "${ssh[@]}" --rsync vsrc/su zbackup@localhost:vdst/sur
  same_data vsrc/su vdst/sur
  sr "${ssh[@]}" --rsync zbackup@localhost:vsrc/su vdst/sup
  same_data vsrc/su vdst/sup
  wait_for 10 no_sessions
}

# The package from scripts/package.sh (vm-e2e.sh copies it in): dpkg -i,
# replicate with the packaged binary (standard and --rsync), dpkg -r leaves
# nothing of it behind.
t_deb_package() {
  [ -f /var/tmp/syncoid-rsync.deb ] || { echo "no package in /var/tmp"; return 1; }
  dpkg -i /var/tmp/syncoid-rsync.deb </dev/null
  /usr/bin/syncoid-rsync --version
  [ -f /usr/share/man/man1/syncoid-rsync.1.gz ] && [ -f /usr/share/bash-completion/completions/syncoid-rsync ]
  zfs create vsrc/deb; rand /vsrc/deb/f 2000000; zfs snapshot vsrc/deb@s1
  SR=/usr/bin/syncoid-rsync sr vsrc/deb vdst/deb
  same_data vsrc/deb vdst/deb; same_guids vsrc/deb vdst/deb
  # A second target of the same source: its own identifier (syncoid's rule).
  SR=/usr/bin/syncoid-rsync sr --rsync --identifier=r vsrc/deb vdst/debr
  same_data vsrc/deb vdst/debr; same_guids vsrc/deb vdst/debr
  dpkg -r syncoid-rsync </dev/null
  [ ! -e /usr/bin/syncoid-rsync ] && [ ! -e /usr/share/doc/syncoid-rsync ] && [ ! -e /usr/share/man/man1/syncoid-rsync.1.gz ]
  ! dpkg -L syncoid-rsync >/dev/null 2>&1
}

setup_pools
case_ full_and_incremental t_full_and_incremental
case_ recursive_with_clone t_recursive_with_clone
case_ bookmark_fallback t_bookmark_fallback
case_ create_bookmark_and_hold t_create_bookmark_and_hold
case_ resume_after_head t_resume_after_head
case_ raw_encrypted t_raw_encrypted
case_ force_delete_guardrails t_force_delete_guardrails
case_ modified_target_rollback t_modified_target_rollback
case_ rsync_local t_rsync_local
case_ rsync_ssh_killed t_rsync_ssh_killed
case_ rsync_streams t_rsync_streams
case_ rsync_coordinator_killed t_rsync_coordinator_killed
case_ rsync_receiver_killed t_rsync_receiver_killed
case_ jobs_tree_atomic t_jobs_tree_atomic
case_ rsync_jobs_coordinator_killed t_rsync_jobs_coordinator_killed
case_ rsync_tree_host_agent t_rsync_tree_host_agent
case_ rsync_receiver_gone_in_run t_rsync_receiver_gone_in_run
case_ sudo_zfs_only_user t_sudo_zfs_only_user
case_ deb_package t_deb_package
for p in vsrc vdst; do zpool destroy -f "$p" >/dev/null 2>&1 || true; done
rm -f /var/tmp/vsrc.img /var/tmp/vdst.img
[ "$fail" -eq 0 ] || { echo "failed: ${failed[*]}"; echo "--- log"; tail -80 "$log"; }
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
