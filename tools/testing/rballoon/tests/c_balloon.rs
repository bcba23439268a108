// SPDX-License-Identifier: GPL-2.0
//! The C driver (virtio_balloon) follows QMP targets, and QEMU and the guest agree on the size.

use rballoon_harness::scenario::{self, balloon_cycle, parse_info_balloon};
use rballoon_harness::{Driver, Result, Transport, Vm, VmConfig};
use std::time::Duration;

// The deepest step leaves 384 MiB: the debug guest (KASAN shadow, kmemleak) has 782 MiB of
// MemTotal in 1 GiB and cannot give 768 MiB.
#[test]
fn c_balloon_follows_qmp_targets_pci() -> Result<()> {
    let cfg = VmConfig::new("c-pci").mem_mib(1024);
    balloon_cycle(cfg, Driver::C, &[768, 512, 384, 640, 1024]).map(drop)
}

#[test]
fn c_balloon_follows_qmp_targets_mmio() -> Result<()> {
    let cfg = VmConfig::new("c-mmio")
        .transport(Transport::Mmio)
        .mem_mib(1024);
    balloon_cycle(cfg, Driver::C, &[768, 384, 896, 1024]).map(drop)
}

#[test]
fn hmp_balloon_and_info_balloon() -> Result<()> {
    let mut vm = Vm::boot(VmConfig::new("c-hmp").mem_mib(1024))?;
    vm.load_driver(Driver::C)?;
    assert_eq!(parse_info_balloon(&vm.hmp("info balloon")?)?, 1024);
    // The monitor's own `balloon` command moves the balloon like QMP's.
    let out = vm.hmp("balloon 600")?;
    assert!(out.trim().is_empty(), "`balloon 600` printed {out:?}");
    let secs = vm.wait_balloon_actual(600 << 20, Duration::from_secs(60))?;
    eprintln!("inflated to 600 MiB in {:.2} s", secs.as_secs_f64());
    assert_eq!(parse_info_balloon(&vm.hmp("info balloon")?)?, 600);
    assert_eq!(vm.meminfo_kb("Balloon")?, 424 * 1024);
    vm.shutdown()
}

#[test]
fn c_driver_unload_returns_memory_and_reload_reinflates() -> Result<()> {
    let mut vm = Vm::boot(VmConfig::new("c-reload").mem_mib(1024))?;
    vm.load_driver(Driver::C)?;
    eprintln!("{}", scenario::header());
    scenario::unload_reload(&mut vm, Driver::C, 512)?;
    vm.shutdown()
}

#[test]
fn c_balloon_reports_guest_stats() -> Result<()> {
    let mut cfg = VmConfig::new("c-stats").mem_mib(1024);
    // Exercise the optional features too: free page hinting needs an iothread, which the
    // configuration adds.
    if let Some(b) = cfg.balloon.as_mut() {
        b.free_page_hint = true;
    }
    let mut vm = Vm::boot(cfg)?;
    vm.load_driver(Driver::C)?;
    scenario::check_guest_stats(&mut vm)?;
    vm.shutdown()
}
