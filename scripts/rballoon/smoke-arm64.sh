#!/usr/bin/env bash
# The host harness's smoke test on an aarch64 guest (QEMU -M virt under TCG), a leg of make matrix:
# boot, the inflate/deflate walk, free page reporting shrinking QEMU's RSS and compaction migrating
# balloon pages, over PCI (virt's PCIe) and MMIO (virt's virtio-mmio slots), each comparing the C
# and the Rust driver in the same run. The tests are the x86 harness's own, run with
# RBALLOON_ARCH=aarch64 (tools/testing/rballoon/src/arch.rs):
#   tests/rust_balloon.rs  both_drivers_agree_on_every_step_{pci,mmio}
#   tests/parity.rs        free_page_reporting_{pci,mmio}, compaction_{pci,mmio}
#
# Steps: the packages of rballoon-matrix.lock (matrix-root.sh: QEMU for arm64, glibc and libgcc for
# cross-compiling the guest helpers) and Debian's arm64 busybox (fetch-busybox-arm64.sh); the
# arm64 guest kernel (mkkernel.sh: holds $RB_CACHE/build.lock and assembles the patched tree under
# it) and its initramfs, in $RB_OUT/guest-arm64/; the harness; the six tests, one at a time.
# Nothing of the x86 guest ($RB_OUT/guest/) is touched.
#
# Prints cargo's output, "test result:" lines included (tally_cargo of tally.sh counts them), also
# into $RB_LOGS/smoke-arm64.log. Exit status: cargo's, or 1 if a step before it failed.
. "$(dirname "$0")/common.sh"

S=$RB_REPO/scripts/rballoon
log=$RB_LOGS/smoke-arm64.log
mkdir -p "$RB_LOGS"
: > "$log"

export RBALLOON_ARCH=aarch64 RBALLOON_FLAVOUR=guest RBALLOON_CACHE=$RB_CACHE RBALLOON_REPO=$RB_REPO
export RBALLOON_RUST=$RB_RUST ACCEL=${ACCEL:-tcg}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$RB_CACHE/harness-target}
manifest=$RB_REPO/tools/testing/rballoon/Cargo.toml
tests=(both_drivers_agree_on_every_step_pci both_drivers_agree_on_every_step_mmio
	free_page_reporting_pci free_page_reporting_mmio compaction_pci compaction_mmio)

prepare() {
	rb_step "arm64 smoke: matrix packages" "$S/matrix-root.sh" &&
	rb_step "arm64 smoke: busybox for arm64" "$S/fetch-busybox-arm64.sh" &&
	rb_step "arm64 smoke: guest kernel" "$S/mkkernel.sh" guest &&
	rb_step "arm64 smoke: guest initramfs" "$S/mkinitramfs.sh" guest &&
	rb_step "arm64 smoke: host harness" cargo build --release --quiet --features rust-driver \
		--tests --manifest-path "$manifest"
}
if ! prepare 2>&1 | tee -a "$log"; then
	rb_log "arm64 smoke: a step before the tests failed (log: $log)"
	exit 1
fi

rc=0
rb_step "arm64 smoke: harness tests on aarch64 (${tests[*]})" \
	cargo test --release --no-fail-fast --features rust-driver --manifest-path "$manifest" \
	--test rust_balloon --test parity -- --test-threads=1 --nocapture --exact "${tests[@]}" 2>&1 |
	tee -a "$log" || rc=$?
exit "$rc"
