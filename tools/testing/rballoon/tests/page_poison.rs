// SPDX-License-Identifier: GPL-2.0
//! `VIRTIO_BALLOON_F_PAGE_POISON` and the driver's `validate`: both drivers must negotiate the
//! same features, by the C driver's rules:
//!
//! - a guest that neither poisons nor zeroes freed pages drops PAGE_POISON (the host must not
//!   expect a pattern in the pages it gets back);
//! - with `init_on_free=1` PAGE_POISON stays (and the driver writes `poison_val` 0);
//! - with `init_on_free=1` and a host without PAGE_POISON, free page reporting is dropped too:
//!   a reported page the host discarded would come back without the zeroes mm relies on;
//! - a guest that poisons freed pages tells the host its pattern (`poison_val`), and QEMU then
//!   keeps the pages it reports: shown from QEMU's side.
#![cfg(feature = "rust-driver")]

use rballoon_harness::hostmem::{qemu_rss_kb, watch_rss};
use rballoon_harness::{guestmem, Driver, Error, Result, Vm, VmConfig};
use std::time::Duration;

/// Feature bits (`include/uapi/linux/virtio_balloon.h`).
const F_PAGE_POISON: usize = 4;
const F_REPORTING: usize = 5;

/// The negotiated features of the balloon `d` is bound to, as sysfs prints them: one character
/// per bit, bit 0 first.
fn features(vm: &mut Vm, d: Driver) -> Result<String> {
    let out = vm.sh(&format!(
        "cat /sys/bus/virtio/drivers/{}/virtio*/features",
        d.sysfs_name()
    ))?;
    let f = out.trim().to_string();
    if f.len() < 64 || !f.chars().all(|c| c == '0' || c == '1') {
        return Err(Error::other(format!("{d}: features read {out:?}")));
    }
    Ok(f)
}

fn bit(f: &str, n: usize) -> bool {
    f.as_bytes()[n] == b'1'
}

/// Boot with `append` on the command line and the device's `page-poison` as given, load each
/// driver in turn, and check the negotiated bits against what the C rules say.
fn negotiate(append: &str, host_poison: Option<bool>, poison: bool, reporting: bool) -> Result<()> {
    Driver::Rust.require_built(&VmConfig::new("check").paths)?;
    let mut cfg = VmConfig::new("poison").mem_mib(512);
    cfg.append = append.to_string();
    if let Some(b) = cfg.balloon.as_mut() {
        b.page_poison = host_poison;
    }
    let mut vm = Vm::boot(cfg)?;
    // The debug guest poisons freed pages (`page_poison=1` built into its command line): then
    // PAGE_POISON stays whenever the host offers it.
    let poisons = vm
        .sh("cat /proc/cmdline")?
        .split_whitespace()
        .any(|w| w == "page_poison=1" || w == "page_poison=on");
    let poison = poison || (poisons && host_poison != Some(false));
    let mut seen = Vec::new();
    for d in [Driver::C, Driver::Rust] {
        vm.load_driver(d)?;
        let f = features(&mut vm, d)?;
        vm.unload_driver(d)?;
        eprintln!("{append:?} page-poison={host_poison:?}: {d:>4} {f}");
        if bit(&f, F_PAGE_POISON) != poison || bit(&f, F_REPORTING) != reporting {
            return Err(Error::other(format!(
                "{d} with {append:?} and page-poison={host_poison:?}: PAGE_POISON {}, REPORTING \
                 {}; want {poison}, {reporting}",
                bit(&f, F_PAGE_POISON),
                bit(&f, F_REPORTING)
            )));
        }
        seen.push((d, f));
    }
    if seen[0].1 != seen[1].1 {
        return Err(Error::other(format!(
            "the drivers negotiate different features: {seen:?}"
        )));
    }
    vm.check_splats()?;
    vm.shutdown()
}

#[test]
fn no_poisoning_drops_page_poison() -> Result<()> {
    negotiate("", None, false, true)
}

#[test]
fn init_on_free_keeps_page_poison() -> Result<()> {
    negotiate("init_on_free=1", None, true, true)
}

#[test]
fn init_on_free_without_host_poison_drops_reporting() -> Result<()> {
    negotiate("init_on_free=1", Some(false), false, false)
}

/// A poisoning guest's free memory may leave QEMU's resident set by at most this share of it ...
const KEPT_FALL_PERCENT: u64 = 25;

/// ... over this long: on the lean guest reporting discards three quarters of freed memory in 2 to
/// 8 s when the host may discard (`tests/parity.rs`, free page reporting).
const KEPT_WATCH: Duration = Duration::from_secs(12);

/// Free memory the guest leaves unwritten, MiB.
const HEADROOM_MIB: u64 = 96;

/// A guest that poisons freed pages (`page_poison=1`) asks the host to keep its pattern: the
/// driver writes `poison_val` (0xaaaaaaaa, as C) with PAGE_POISON, and QEMU then keeps the pages
/// the guest reports instead of discarding them (`virtio_balloon_handle_report()`: a discarded
/// page would come back zeroed, and the page allocator's poison check would report it). Seen
/// from QEMU's side: with PAGE_POISON and REPORTING negotiated, its resident set does not fall
/// while the driver reports the guest's free memory (all of it resident: poisoning wrote it, and
/// the guest writes and frees it once more), and writing that memory again finds no corrupted
/// free page. A `poison_val` of 0 lets QEMU discard: the resident set falls, and the check
/// reports `pagealloc: memory corruption`.
#[test]
fn a_poisoning_guest_keeps_the_pages_it_reports() -> Result<()> {
    Driver::Rust.require_built(&VmConfig::new("check").paths)?;
    let mut cfg = VmConfig::new("poison-kept").mem_mib(512);
    cfg.append_arg("page_poison=1");
    let mut vm = Vm::boot(cfg)?;
    let d = Driver::Rust;
    vm.load_driver(d)?;
    let f = features(&mut vm, d)?;
    if !bit(&f, F_PAGE_POISON) || !bit(&f, F_REPORTING) {
        return Err(Error::other(format!(
            "{d} on a poisoning guest: PAGE_POISON {}, REPORTING {}; want both",
            bit(&f, F_PAGE_POISON),
            bit(&f, F_REPORTING)
        )));
    }
    let free_mib = vm.meminfo_kb("MemFree")? / 1024;
    let mib = free_mib.saturating_sub(HEADROOM_MIB);
    guestmem::touch(&mut vm, mib, Duration::from_secs(120))?;
    let rss_kb = qemu_rss_kb(&vm)?;
    let fall_kb = (mib << 10) * KEPT_FALL_PERCENT / 100;
    let w = watch_rss(&vm, Duration::from_millis(250), KEPT_WATCH, |kb| {
        kb + fall_kb <= rss_kb
    })?;
    eprintln!(
        "{d}, page_poison=1: {free_mib} MiB free, {mib} MiB written and freed; QEMU's RSS {} MiB, \
         at least {} MiB over {KEPT_WATCH:?}",
        rss_kb >> 10,
        w.min_kb >> 10
    );
    if let Some(t) = w.took {
        return Err(Error::other(format!(
            "{d} on a poisoning guest: QEMU's RSS fell by {KEPT_FALL_PERCENT}% of the {mib} MiB \
             the guest freed within {t:?}: QEMU discarded reported pages, so it was not told the \
             poison value"
        )));
    }
    // Pages QEMU discarded would come back zeroed: the allocator's check of its poison on
    // allocation reports them.
    guestmem::touch(&mut vm, mib, Duration::from_secs(120))?;
    vm.unload_driver(d)?;
    vm.check_splats()?;
    vm.shutdown()
}
