# rballoon: a Rust virtio-balloon driver for Linux 7.3, built and tested under QEMU.
#
#   make demo    boot a guest, inflate the balloon to half of its memory and back, print a table
#   make test    build everything, run KUnit and the harness tests (what CI runs)
#   make check   the quick loop: KUnit, lint and a handful of VM tests on both drivers
#   make bench   the C balloon driver against ours, side by side (ROUNDS=5, BENCH_MEM=4096,
#                WORKLOADS=1,3,4,5; BENCH=short or make bench-short: 1 round, 2 GiB) -> out/bench/
#   make stress  the stress and fault suite for both drivers (STRESS_SECONDS, FLAVOUR=debug)
#   make matrix  other architectures under QEMU: the KUnit suites on arm64 (4 KiB and 64 KiB
#                pages) and s390x (big-endian, RUST=latest), the harness smoke test on an arm64
#                guest (LEGS=arm64-4k picks some); not part of make test
#   make mutants break one feature at a time (tools/testing/rballoon/mutants.json) and check that
#                the KUnit cases claiming it fail (MUTANTS_HARNESS=1: harness tests too;
#                MUTANTS=id,... picks some)
#
# RUST=min (default) builds with trixie's Rust, the kernel's minimum; RUST=latest with the newest
# trixie-backports serves, in a toolchain root and build directories of its own.
# Everything heavy lives in $(RBALLOON_CACHE) (default /var/cache/rballoon), outside the checkout.

RBALLOON_CACHE ?= /var/cache/rballoon
export RBALLOON_CACHE
FLAVOUR ?= guest
export RBALLOON_FLAVOUR := $(FLAVOUR)
ACCEL ?= tcg
export ACCEL
RUST ?= min
export RBALLOON_RUST := $(RUST)
DRIVER ?= rust
MEM ?= 2048

S := scripts/rballoon
HARNESS_DIR := tools/testing/rballoon
export CARGO_TARGET_DIR := $(RBALLOON_CACHE)/harness-target
# The harness binaries are shared by every checkout through the cache: tell them which one is this.
export RBALLOON_REPO := $(CURDIR)
HARNESS := $(CARGO_TARGET_DIR)/release/rballoon

.PHONY: all root tree kernel initramfs harness guest run demo kunit matrix mutants lint test stress harness-test check bench bench-short patches distclean help

all: guest harness

help:
	@sed -n '3,19p' Makefile

root:
	@$(S)/mkroot.sh

tree: root
	@$(S)/mktree.sh

kernel: root
	@$(S)/mkkernel.sh $(FLAVOUR)

initramfs: kernel
	@$(S)/mkinitramfs.sh $(FLAVOUR)

guest: initramfs

harness:
	@$(S)/timed.sh "building the host harness" cargo build --release --quiet --manifest-path $(HARNESS_DIR)/Cargo.toml

run: guest harness
	@$(HARNESS) run --mem $(MEM) --driver $(DRIVER) $(if $(filter mmio,$(TRANSPORT)),--mmio)

demo: guest harness
	@$(HARNESS) demo --driver $(DRIVER) --mem $(MEM) $(if $(filter mmio,$(TRANSPORT)),--mmio)

kunit: root
	@$(S)/kunit.sh

# KUnit on other architectures (scripts/rballoon/matrix.sh); LEGS= picks legs, default all.
matrix: root
	@$(if $(LEGS),MATRIX_LEGS="$(LEGS)") $(S)/matrix.sh

lint: kernel
	@$(S)/lint.sh

mutants: root
	@$(if $(MUTANTS),MUTANTS="$(MUTANTS)") $(if $(MUTANTS_HARNESS),MUTANTS_HARNESS="$(MUTANTS_HARNESS)") python3 $(S)/mutants.py

harness-test: guest harness
	@$(S)/timed.sh "harness tests" cargo test --release --no-fail-fast --features rust-driver --manifest-path $(HARNESS_DIR)/Cargo.toml -- --test-threads=1

test:
	@$(S)/test.sh

check:
	@$(S)/check.sh

BENCH ?= full
bench: guest harness
	@ROUNDS="$(ROUNDS)" BENCH_MEM="$(BENCH_MEM)" WORKLOADS="$(WORKLOADS)" $(S)/bench.sh $(BENCH)

bench-short: guest harness
	@$(S)/bench.sh short

# DRIVER= picks one driver; without it both run.
stress: guest harness
	@STRESS_DRIVERS="$(if $(filter command line environment,$(origin DRIVER)),$(DRIVER),rust c)" $(S)/stress.sh

patches: tree
	@$(S)/export-patches.sh

distclean:
	rm -rf $(RBALLOON_CACHE)
