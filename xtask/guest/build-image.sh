#!/bin/bash
# Builds the Debian bookworm guest image from Debian packages: debootstrap, no other download.
# Usage: build-image.sh OUT_DIR MIRROR
# Writes OUT_DIR/{base.qcow2,vmlinuz,initrd.img,id_ed25519,id_ed25519.pub}. Needs root, no loop devices.
# The image boots by direct kernel boot (no bootloader): root=/dev/vda rw console=ttyS0 net.ifnames=0
set -euo pipefail
out=$1 mirror=$2
root=$out/rootfs
step() { printf '[image %4ss] %s\n' "$SECONDS" "$*"; }

rm -rf "$root"
ssh-keygen -q -t ed25519 -N '' -C virtfarm-guest -f "$out/id_ed25519"

step "debootstrap bookworm from $mirror"
# python3-cffi-backend: debootstrap does not resolve the virtual package cloud-init needs through it.
# The cloud kernel boots ~10 s faster under TCG than linux-image-amd64 (fewer modules, LZ4).
debootstrap --variant=minbase \
  --include=linux-image-cloud-amd64,initramfs-tools,systemd-sysv,udev,dbus,openssh-server,python3,qemu-guest-agent,sudo,iproute2,cloud-init,python3-cffi-backend \
  bookworm "$root" "$mirror" >"$out/debootstrap.log"

step "configure the guest"
echo vfguest >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 vfguest\n' >"$root/etc/hosts"
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >"$root/etc/fstab"
# Empty machine-id: each clone makes its own at first boot (and so its own DHCP identity).
: >"$root/etc/machine-id"; rm -f "$root/var/lib/dbus/machine-id"
cat >"$root/etc/systemd/network/80-dhcp.network" <<'NET'
[Match]
Name=en* eth*
[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
[DHCPv4]
ClientIdentifier=mac
NET
chroot "$root" systemctl enable -q systemd-networkd qemu-guest-agent
# Units this guest never needs; each costs a second or more of CPU under TCG at every boot.
chroot "$root" systemctl mask -q e2scrub_reap.service e2scrub_all.timer systemd-networkd-wait-online.service \
  modprobe@drm.service modprobe@efi_pstore.service modprobe@fuse.service modprobe@loop.service \
  modprobe@dm_mod.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount dev-hugepages.mount \
  sys-kernel-debug.mount sys-kernel-tracing.mount
# cloud-init runs only when a NoCloud seed (a volume labelled cidata) is attached; otherwise
# ds-identify disables it at boot. It must have two sources to search: with one (or one and
# None) it takes that one unsearched and runs every boot (about 20 s of Python under TCG,
# and the network waits for it). Host keys: ed25519 only, RSA keys take seconds under TCG.
printf 'datasource_list: [ NoCloud, ConfigDrive ]\nssh_genkeytypes: [ ed25519 ]\n' \
  >"$root/etc/cloud/cloud.cfg.d/90-virtfarm.cfg"
chroot "$root" passwd -d root >/dev/null
chroot "$root" useradd -m -s /bin/bash -G sudo ansible
echo 'ansible ALL=(ALL) NOPASSWD:ALL' >"$root/etc/sudoers.d/ansible"; chmod 440 "$root/etc/sudoers.d/ansible"
for home in root home/ansible; do
  install -d -m700 "$root/$home/.ssh"; install -m600 "$out/id_ed25519.pub" "$root/$home/.ssh/authorized_keys"
done
chroot "$root" chown -R ansible:ansible /home/ansible/.ssh
echo 'UseDNS no' >"$root/etc/ssh/sshd_config.d/virtfarm.conf"
# debootstrap leaves the build machine's resolver here: a test guest must send nothing to an
# address the tests did not make, and has no name to look up. None: lookups fail at once.
echo '# no resolver' >"$root/etc/resolv.conf"
# Drivers for emulated hardware the guest never uses: loading them costs seconds under TCG.
printf 'blacklist %s\n' cfg80211 kvm kvm_amd kvm_intel ccp iTCO_wdt iTCO_vendor_support intel_pmc_bxt pcspkr \
  i2c_i801 i2c_piix4 lpc_ich drm bochs efi_pstore psmouse serio_raw ahci ata_piix pata_acpi ata_generic xhci_pci \
  usbcore floppy joydev >"$root/etc/modprobe.d/virtfarm.conf"

step "small initrd for direct kernel boot"
echo MODULES=list >"$root/etc/initramfs-tools/conf.d/virtfarm"
# virtio_scsi, sr_mod: a cloud-init seed is a CD-ROM on virtio-scsi, which ds-identify must see
# when it runs, early in systemd's start; loaded later by udev, the seed is missed under TCG
# and cloud-init disables itself.
printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic virtio_scsi sr_mod >"$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all 2>/dev/null
install -m644 "$root"/boot/vmlinuz-* "$out/vmlinuz"; install -m644 "$root"/boot/initrd.img-* "$out/initrd.img"
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
  "$root"/usr/share/locale/* "$root"/boot/*

step "ext4 file system and qcow2"
mkfs.ext4 -q -L root -d "$root" "$out/base.raw" 4G
qemu-img convert -O qcow2 "$out/base.raw" "$out/base.qcow2"
rm -rf "$out/base.raw" "$root"
chmod 644 "$out/base.qcow2"
step "done: $(du -h "$out/base.qcow2" | cut -f1) qcow2"
