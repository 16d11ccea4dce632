#!/bin/bash
# Builds the two LXD images of the bed as unified tarballs (metadata.yaml + rootfs/), for
# `lxc image import`:
# - busybox.tar.gz: Debian's busybox-static alone (about 1 MB), so that tens of containers
#   cost next to nothing on `dir` storage;
# - python.tar: the bullseye root the project builds anyway (python3), with the same busybox
#   as init, for the one container Ansible runs Python modules in.
# busybox-static comes from this machine's apt sources (`apt-get download`), as every other
# package of the project does.
# Usage: build-lxd-images.sh OUT_DIR BULLSEYE_ROOT
# Needs root.
set -euo pipefail
out=$1 bullseye=$2
step() { printf '[lxd images %4ss] %s\n' "$SECONDS" "$*"; }

step "busybox-static from the apt sources"
(cd "$out" && apt-get download -qq -o APT::Sandbox::User=root busybox-static)
dpkg-deb -x "$out"/busybox-static_*.deb "$out/deb"
rm "$out"/busybox-static_*.deb

# What both roots get: busybox, and an init that asks LXD's dnsmasq for an address and then
# idles (no getty: `lxc exec` is the way in).
overlay=$out/overlay
mkdir -p "$overlay"/{bin,sbin,etc}
cp "$out/deb/bin/busybox" "$overlay/bin/busybox"
ln -s /bin/busybox "$overlay/sbin/init"
cat >"$overlay/etc/inittab" <<'EOF'
::sysinit:/bin/busybox udhcpc -b -q -i eth0 -s /etc/udhcpc.script
EOF
cat >"$overlay/etc/udhcpc.script" <<'EOF'
#!/bin/busybox sh
case "$1" in
  bound|renew) /bin/busybox ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" ;;
esac
EOF
chmod 0755 "$overlay/etc/udhcpc.script"

metadata() {
    printf 'architecture: x86_64\ncreation_date: %s\nproperties:\n  description: %s\n  os: debian\n' \
        "$(date +%s)" "$1" >"$out/metadata.yaml"
}

step "busybox image"
rootfs=$out/busybox/rootfs
mkdir -p "$rootfs"/{dev,proc,sys,tmp,root,run,var}
cp -a "$overlay"/. "$rootfs"/
for applet in $("$overlay/bin/busybox" --list); do
    [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
done
metadata "busybox-static"
tar -C "$out" -czf "$out/busybox.tar.gz" metadata.yaml -C "$out/busybox" rootfs

step "python image (bullseye root + busybox init)"
metadata "bullseye python3"
# The bullseye root has a merged /usr (/bin and /sbin are links): the overlay's files are
# added without their directories, so that extracting them follows those links.
tar -C "$out" -cf "$out/python.tar" metadata.yaml
tar -C "$bullseye/.." -rf "$out/python.tar" --transform 's,^root,rootfs,S' root
tar -C "$overlay" -rf "$out/python.tar" --no-recursion --transform 's,^,rootfs/,S' \
    bin/busybox sbin/init etc/inittab etc/udhcpc.script
rm -rf "$out/deb" "$out/overlay" "$out/busybox" "$out/metadata.yaml"
step "done: $(du -sh "$out"/busybox.tar.gz "$out"/python.tar | tr '\n' ' ')"
