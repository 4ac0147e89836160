#!/usr/bin/env bash
# Vagrant provisioner 1: build the stord-patched kernel with kernel_patch/build.sh and boot
# it by default. Runs as root in the Debian 12 box; the repository is at /stord.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q linux-source-6.12 bc bison flex libelf-dev libssl-dev dwarves cpio \
    xz-utils gcc make patch
export STORD_KERNEL_OUT=/var/cache/stord/kernel
export STORD_KERNEL_EXTRA_CONFIG=/stord/vagrant/provision/box.config
JOBS=$(nproc) bash /stord/kernel_patch/build.sh
image=$(readlink -f "$STORD_KERNEL_OUT/bzImage")
install -m 644 "$image" /boot/vmlinuz-6.12-stord

# The kernel has its drivers built in and no initramfs, so the root is named by PARTUUID
# (resolving root=UUID= needs an initramfs).
partuuid=$(findmnt -no PARTUUID /)
bootfs=$(findmnt -no UUID -T /boot)
kpath=/boot/vmlinuz-6.12-stord
[ "$(findmnt -no TARGET -T /boot)" = /boot ] && kpath=/vmlinuz-6.12-stord
cat > /etc/grub.d/09_stord <<GRUB
#!/bin/sh
cat <<'ENTRY'
menuentry 'Debian GNU/Linux, stord-patched Linux 6.12' --id stord {
	insmod part_msdos
	insmod part_gpt
	insmod ext2
	search --no-floppy --fs-uuid --set=root $bootfs
	linux $kpath root=PARTUUID=$partuuid ro console=tty0 console=ttyS0,115200
}
ENTRY
GRUB
chmod 755 /etc/grub.d/09_stord
sed -i 's/^GRUB_DEFAULT=.*/GRUB_DEFAULT=stord/' /etc/default/grub
update-grub
echo "kernel.sh: installed $image as the default boot entry; rebooting into it"
