#!/bin/bash
# Builds the bootable guest disk, laid out as users' cloud images are: a GPT disk with a BIOS
# boot partition (GRUB's core.img), an EFI system partition (GRUB as EFI/BOOT/BOOTX64.EFI, the
# path firmware boots with empty NVRAM) and the root file system; cloud-init and qemu-guest-agent
# inside, and no user or key: cloud-init makes them from the seed. From Debian packages only.
# Usage: build-bootable-image.sh OUT_DIR MIRROR
# Writes OUT_DIR/bootable.qcow2. Needs root, sfdisk, mkfs.vfat and mtools; no loop devices: each
# file system is made in a file of its own and written into the disk image at its partition.
set -euo pipefail
out=$1 mirror=$2
root=$out/rootfs disk=$out/disk.raw
step() { printf '[bootable image %4ss] %s\n' "$SECONDS" "$*"; }

rm -rf "$root"
step "debootstrap bookworm from $mirror"
# grub-*-bin: the boot loaders' images, put together below with the guest's own grub-mkimage.
debootstrap --variant=minbase \
  --include=linux-image-cloud-amd64,initramfs-tools,systemd-sysv,udev,dbus,openssh-server,python3,qemu-guest-agent,sudo,iproute2,cloud-init,python3-cffi-backend,grub-common,grub-pc-bin,grub-efi-amd64-bin \
  bookworm "$root" "$mirror" >"$out/debootstrap.log"

step "configure the guest"
echo localhost >"$root/etc/hostname"
echo 'LABEL=root / ext4 rw,errors=remount-ro 0 1' >"$root/etc/fstab"
: >"$root/etc/machine-id"; rm -f "$root/var/lib/dbus/machine-id"
# Match-all DHCP by MAC, as the hypervisor's reservations expect.
printf '[Match]\nName=en* eth*\n[Network]\nDHCP=ipv4\n[DHCPv4]\nClientIdentifier=mac\n' \
  >"$root/etc/systemd/network/80-dhcp.network"
chroot "$root" systemctl enable -q systemd-networkd qemu-guest-agent
chroot "$root" systemctl mask -q systemd-networkd-wait-online.service e2scrub_reap.service e2scrub_all.timer
# The image holds no host keys: cloud-init makes them at first boot, seeded or not. ed25519
# only: an RSA key takes seconds to make under TCG. C.UTF-8 is built into libc: cloud-init's
# default en_US.UTF-8 runs locale-gen at first boot, 25-40 s under TCG (seen on the console).
printf 'datasource_list: [ NoCloud, None ]\nssh_genkeytypes: [ ed25519 ]\nlocale: C.UTF-8\n' >"$root/etc/cloud/cloud.cfg.d/90-virtfarm.cfg"
# debootstrap leaves the build machine's resolver here: a test guest must send nothing to an
# address the tests did not make, and has no name to look up. None: lookups fail at once.
echo '# no resolver' >"$root/etc/resolv.conf"
# Drivers for emulated hardware the guest never uses: loading them costs seconds under TCG.
printf 'blacklist %s\n' cfg80211 kvm kvm_amd kvm_intel ccp iTCO_wdt iTCO_vendor_support intel_pmc_bxt pcspkr \
  i2c_i801 i2c_piix4 lpc_ich drm bochs efi_pstore psmouse serio_raw ahci ata_piix pata_acpi ata_generic xhci_pci \
  usbcore floppy joydev >"$root/etc/modprobe.d/virtfarm.conf"
# Clones must not share host keys: cloud-init makes new ones at first boot.
rm -f "$root"/etc/ssh/ssh_host_*
echo MODULES=list >"$root/etc/initramfs-tools/conf.d/virtfarm"
printf '%s\n' virtio_pci virtio_blk virtio_scsi sd_mod ext4 crc32c_generic >"$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all 2>/dev/null

step "boot loaders"
# One configuration for BIOS and UEFI: find the root by its label, boot at once on the serial console.
install -d "$root/boot/grub"
cat >"$root/boot/grub/grub.cfg" <<'CFG'
set timeout=0
linux /vmlinuz root=LABEL=root ro console=ttyS0 net.ifnames=0
initrd /initrd.img
boot
CFG
printf 'search --no-floppy --label root --set root\nset prefix=($root)/boot/grub\n' >"$root/tmp/early.cfg"
modules="part_gpt ext2 search normal linux"
chroot "$root" grub-mkimage -O i386-pc -o /tmp/core.img -c /tmp/early.cfg -p /boot/grub biosdisk $modules
chroot "$root" grub-mkimage -O x86_64-efi -o /tmp/BOOTX64.EFI -c /tmp/early.cfg -p /boot/grub efi_gop $modules
mv "$root/tmp/core.img" "$root/tmp/BOOTX64.EFI" "$out/"
cp "$root/usr/lib/grub/i386-pc/boot.img" "$out/boot.img"
rm -rf "$root"/tmp/* "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
  "$root"/usr/share/man/* "$root"/usr/share/locale/*

step "partitioned disk"
# Sectors: 1 MiB BIOS boot partition at 2048, 32 MiB ESP at 4096, the root from 34 MiB to 1 MiB before
# the end (the GPT's backup is in the last sectors).
truncate -s 4G "$disk"
sfdisk -q "$disk" <<'PARTS'
label: gpt
start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios
start=4096, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
start=69632, size=8316928, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root
PARTS
mkfs.vfat -n ESP -C "$out/esp.raw" 32768 >/dev/null
mmd -i "$out/esp.raw" ::/EFI ::/EFI/BOOT
mcopy -i "$out/esp.raw" "$out/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
dd if="$out/esp.raw" of="$disk" bs=1M seek=2 conv=notrunc status=none
mkfs.ext4 -q -L root -d "$root" -E offset=$((69632 * 512)),nodiscard "$disk" $((8316928 / 2))k
# BIOS: boot.img's code in the MBR (the partition table stays), told where core.img starts;
# core.img in the BIOS boot partition, its first sector told where the rest of it starts.
le64() { printf "$(printf '\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)) 0 0 0 0)"; }
dd if="$out/boot.img" of="$disk" bs=440 count=1 conv=notrunc status=none
le64 2048 | dd of="$disk" bs=1 seek=$((0x5c)) conv=notrunc status=none
dd if="$out/core.img" of="$disk" bs=512 seek=2048 conv=notrunc status=none
le64 2049 | dd of="$disk" bs=1 seek=$((2048 * 512 + 0x1f4)) conv=notrunc status=none

step "qcow2"
qemu-img convert -O qcow2 "$disk" "$out/bootable.qcow2"
rm -rf "$disk" "$out"/esp.raw "$out"/core.img "$out"/boot.img "$out"/BOOTX64.EFI "$root"
chmod 644 "$out/bootable.qcow2"
step "done: $(du -h "$out/bootable.qcow2" | cut -f1) qcow2"
