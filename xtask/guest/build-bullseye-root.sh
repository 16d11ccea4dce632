#!/bin/bash
# Builds the oldest Debian release the mirror serves, bullseye (glibc 2.31), as a root directory
# the tests run the shipped binaries in with chroot: a machine with only a libvirt client library
# and Python, as users' older controllers and hypervisors are.
# Usage: build-bullseye-root.sh OUT_DIR MIRROR
# Writes OUT_DIR/root. Needs root.
set -euo pipefail
out=$1 mirror=$2
root=$out/root
step() { printf '[bullseye %4ss] %s\n' "$SECONDS" "$*"; }

step "debootstrap bullseye from $mirror"
debootstrap --variant=minbase --include=libvirt0,python3 bullseye "$root" "$mirror" >"$out/debootstrap.log"
# The mount points the tests bind the daemon's socket directory and the collection on.
mkdir -p "$root/run/libvirt" "$root/opt/collection"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
step "done: $(du -sh "$root" | cut -f1)"
