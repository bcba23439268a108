// SPDX-License-Identifier: GPL-2.0
//! `VIRTIO_BALLOON_F_PAGE_POISON` and the driver's `validate`: both drivers must negotiate the
//! same features, by the C driver's rules:
//!
//! - a guest that neither poisons nor zeroes freed pages drops PAGE_POISON (the host must not
//!   expect a pattern in the pages it gets back);
//! - with `init_on_free=1` PAGE_POISON stays (and the driver writes `poison_val` 0);
//! - with `init_on_free=1` and a host without PAGE_POISON, free page reporting is dropped too:
//!   a reported page the host discarded would come back without the zeroes mm relies on.
#![cfg(feature = "rust-driver")]

use rballoon_harness::{Driver, Error, Result, Vm, VmConfig};

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
