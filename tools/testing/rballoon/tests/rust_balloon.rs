// SPDX-License-Identifier: GPL-2.0
//! The same scenarios for the Rust driver (module `rballoon`), and for the C driver alongside it so
//! the two are compared on identical steps. Not part of the default run yet:
//! `cargo test --features rust-driver -- --test-threads=1`. Each test fails at once, saying why, if
//! the Rust module was not built.
#![cfg(feature = "rust-driver")]

use rballoon_harness::scenario::{self, balloon_cycle};
use rballoon_harness::{Driver, Result, Transport, Vm, VmConfig};

/// Fail before booting anything if the Rust module was not built.
fn require_rust() -> Result<()> {
    Driver::Rust.require_built(&VmConfig::new("check").paths)
}

#[test]
fn both_drivers_follow_qmp_targets_pci() -> Result<()> {
    require_rust()?;
    for d in Driver::ALL {
        balloon_cycle(
            VmConfig::new("both-pci").mem_mib(1024),
            d,
            &[768, 512, 256, 640, 1024],
        )?;
    }
    Ok(())
}

#[test]
fn both_drivers_follow_qmp_targets_mmio() -> Result<()> {
    require_rust()?;
    for d in Driver::ALL {
        let cfg = VmConfig::new("both-mmio")
            .transport(Transport::Mmio)
            .mem_mib(1024);
        balloon_cycle(cfg, d, &[768, 384, 896, 1024])?;
    }
    Ok(())
}

#[test]
fn rust_driver_unload_returns_memory_and_reload_reinflates() -> Result<()> {
    let cfg = VmConfig::new("rust-reload").mem_mib(1024);
    Driver::Rust.require_built(&cfg.paths)?;
    let mut vm = Vm::boot(cfg)?;
    vm.load_driver(Driver::Rust)?;
    eprintln!("{}", scenario::header());
    scenario::unload_reload(&mut vm, Driver::Rust, 512)?;
    vm.shutdown()
}

#[test]
fn both_drivers_report_guest_stats() -> Result<()> {
    require_rust()?;
    for d in Driver::ALL {
        let mut vm = Vm::boot(VmConfig::new("both-stats").mem_mib(1024))?;
        vm.load_driver(d)?;
        scenario::check_guest_stats(&mut vm)?;
        vm.shutdown()?;
    }
    Ok(())
}
