quiet() { "$@" >/dev/null 2>&1 || true; }
# --- fresh pools and a small, known history --------------------------------
quiet zpool destroy -f src; quiet zpool destroy -f dst
zpool create -f -o ashift=12 src /dev/vdb; zpool create -f -o ashift=12 dst /dev/vdc
zfs create src/data
head -c 3000000 /dev/urandom > /src/data/f1; zfs snapshot src/data@a; sleep 1
echo two > /src/data/f2; zfs snapshot src/data@b; sleep 1
echo three >> /src/data/f2; zfs snapshot src/data@c
zfs bookmark src/data@a src/data#a
zfs create src/data/child; zfs snapshot src/data/child@a
zfs clone src/data@b src/clone
zfs set syncoid:sync=true src/data
echo secretsecret | zfs create -o encryption=on -o keyformat=passphrase -o keylocation=prompt src/enc
zfs snapshot src/enc@e1
zfs hold keep src/data@a
