# shellcheck shell=bash
# The guest's architecture for mkkernel.sh and mkinitramfs.sh. Sourced after common.sh, never run.
#
# RBALLOON_ARCH=x86_64 (default) or aarch64, as the harness reads it (tools/testing/rballoon,
# src/config.rs). x86_64 is what make test builds: nothing below changes it. aarch64 is the smoke
# guest for QEMU -M virt (scripts/rballoon/smoke-arm64.sh): the same fragments plus the arm64
# one, built with ARCH=arm64 into a build directory of its own, so that neither guest's build
# rebuilds the other.
RB_GUEST_ARCH=${RBALLOON_ARCH:-x86_64}
case $RB_GUEST_ARCH in
x86_64)
	RB_GUEST_SUFFIX=
	RB_KMAKE_ARCH=()
	RB_KIMAGE=bzImage
	RB_ARCH_FRAG=
	RB_CC_TARGET=()
	RB_BUSYBOX=$RB_ROOT/bin/busybox
	;;
aarch64)
	RB_GUEST_SUFFIX=-arm64
	RB_KMAKE_ARCH=(ARCH=arm64)
	RB_KIMAGE=Image
	RB_ARCH_FRAG=kernel/configs/rballoon-guest-arm64.config
	# The root's clang cross-compiles; glibc and libgcc for aarch64 come from the *-arm64-cross
	# packages of rballoon-matrix.lock, and lld links (the root has no aarch64 GNU ld).
	RB_CC_TARGET=(--target=aarch64-linux-gnu -fuse-ld=lld)
	# Debian's busybox-static for arm64, unpacked into the cache by fetch-busybox-arm64.sh.
	RB_BUSYBOX=$RB_CACHE/arm64-userspace/busybox
	;;
*) rb_die "RBALLOON_ARCH=$RB_GUEST_ARCH: x86_64 or aarch64" ;;
esac

# The build directory of FLAVOUR's guest for this architecture.
rb_guest_dir() { # FLAVOUR
	echo "$RB_OUT/$1$RB_GUEST_SUFFIX"
}
