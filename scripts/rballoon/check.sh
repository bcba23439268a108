#!/usr/bin/env bash
# make check: the quick loop for daily work (5 minutes or less with warm builds). KUnit but for the
# cases marked slow (a silent host's 30 s timeouts, waited out), lint, and the VM tests that cover
# inflate and deflate, compaction and free page reporting, each on both drivers (PCI). make test
# stays the full suite and what CI runs. Same closing line as make test.
. "$(dirname "$0")/common.sh"
export KUNIT_FILTER=${KUNIT_FILTER:-speed>slow}
. "$RB_REPO/scripts/rballoon/suites.sh"
suite_begin "make check"

# Each test boots both drivers on the same QEMU and compares them.
hlog=$RB_LOGS/harness-check.log
rc=0
rb_step "VM tests (inflate/deflate, compaction, reporting)" \
	cargo test --release --no-fail-fast --features rust-driver --manifest-path tools/testing/rballoon/Cargo.toml \
	--test rust_balloon --test parity -- --test-threads=1 --exact \
	both_drivers_agree_on_every_step_pci compaction_pci free_page_reporting_pci 2>&1 | tee "$hlog" || rc=$?
tally_cargo "$rc" "$hlog"

suite_end
