// SPDX-License-Identifier: GPL-2.0
//! Feature parity of the two drivers on the memory-management paths a balloon takes part in:
//! compaction of inflated pages ([`compaction`]), free page reporting ([`reporting`]) and
//! deflating on OOM ([`oom`]). Each scenario runs on one booted VM with one driver [`Case`] and
//! returns its figures, checked against the kernel's and QEMU's accounting; comparing the cases
//! (and the tables printing them side by side) is left to the caller.

pub mod compaction;
pub mod oom;
pub mod reporting;

use crate::config::{Transport, VmConfig};
use crate::driver::Driver;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::vm::Vm;
use std::collections::BTreeMap;
use std::fmt;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A driver as loaded for a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    /// Which driver.
    pub driver: Driver,
    /// Whether compaction may migrate inflated pages. Only the Rust driver can refuse
    /// (`modprobe rballoon migration=0`): 7.3 offers no run-time switch, and the C driver always
    /// migrates when the kernel has `CONFIG_BALLOON_MIGRATION`.
    pub migration: bool,
    /// Whether the Rust driver inflates by whole free 2 MiB blocks first (`blocks=1`, which the
    /// operator must ask for); the C driver never does.
    pub blocks: bool,
}

impl Case {
    /// The C driver.
    pub const C: Case = Case {
        driver: Driver::C,
        migration: true,
        blocks: false,
    };
    /// The Rust driver.
    pub const RUST: Case = Case {
        driver: Driver::Rust,
        migration: true,
        blocks: false,
    };
    /// The Rust driver refusing balloon migration.
    pub const RUST_NO_MIGRATION: Case = Case {
        driver: Driver::Rust,
        migration: false,
        blocks: false,
    };
    /// The Rust driver inflating by whole free 2 MiB blocks first.
    pub const RUST_BLOCKS: Case = Case {
        driver: Driver::Rust,
        migration: true,
        blocks: true,
    };

    /// The module parameters that make this case.
    fn module_args(self) -> Result<&'static str> {
        match (self.driver, self.migration, self.blocks) {
            (_, true, false) => Ok(""),
            (Driver::Rust, false, false) => Ok("migration=0"),
            (Driver::Rust, true, true) => Ok("blocks=1"),
            (Driver::Rust, false, true) => Ok("migration=0 blocks=1"),
            (Driver::C, false, _) => Err(Error::other(
                "the C driver cannot refuse balloon migration at run time (only a kernel without \
                 CONFIG_BALLOON_MIGRATION can)",
            )),
            (Driver::C, true, true) => Err(Error::other(
                "the C driver has no block inflation: it takes single pages",
            )),
        }
    }

    /// `modprobe` the driver with this case's parameters and wait until it is bound.
    pub fn load(self, vm: &mut Vm) -> Result<()> {
        let args = self.module_args()?;
        if args.is_empty() {
            return vm.load_driver(self.driver);
        }
        vm.sh(&format!("modprobe {} {args}", self.driver.module()))?;
        let t0 = Instant::now();
        while !vm.driver_bound(self.driver)? {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("{self} not bound to the balloon 30 s after modprobe"),
                ));
            }
            sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.module_args() {
            Ok(a) if !a.is_empty() => write!(f, "{} {a}", self.driver),
            _ => write!(f, "{}", self.driver),
        }
    }
}

/// A VM of `mem_mib` on `transport` named after the scenario and the case, the case's driver
/// loaded. Fails at once, saying why, if the driver was not built.
pub fn boot(scenario: &str, transport: Transport, mem_mib: u64, case: Case) -> Result<Vm> {
    boot_with(scenario, transport, mem_mib, case, |_| {})
}

/// [`boot`], with `tweak` applied to the VM's configuration first (e.g.
/// [`compaction::configure`]).
pub fn boot_with(
    scenario: &str,
    transport: Transport,
    mem_mib: u64,
    case: Case,
    tweak: impl FnOnce(&mut VmConfig),
) -> Result<Vm> {
    let tag = match (case.driver, case.migration, case.blocks) {
        (Driver::C, _, _) => "c",
        (Driver::Rust, true, false) => "rs",
        (Driver::Rust, false, false) => "rs-nomig",
        (Driver::Rust, true, true) => "rs-blocks",
        (Driver::Rust, false, true) => "rs-nomig-blocks",
    };
    let t = match transport {
        Transport::Pci => "pci",
        Transport::Mmio => "mmio",
    };
    let mut cfg = VmConfig::new(&format!("{scenario}-{tag}-{t}"))
        .transport(transport)
        .mem_mib(mem_mib);
    tweak(&mut cfg);
    case.driver.require_built(&cfg.paths)?;
    let mut vm = Vm::boot(cfg)?;
    case.load(&mut vm)
        .context(format!("{scenario}: loading the {case} driver"))?;
    Ok(vm)
}

/// Run `scenario` on a fresh VM per case ([`boot_with`], `tweak` applied), shut down after `run`
/// (a splat in its kernel log fails the case); print the table of what was measured, also when a
/// case fails; the figures, or the first error.
pub fn per_case<F>(
    scenario: &str,
    t: Transport,
    mem_mib: u64,
    tweak: fn(&mut VmConfig),
    cases: &[Case],
    run: impl Fn(&mut Vm, Case) -> Result<F>,
    table: impl Fn(&str, &[F]) -> String,
) -> Result<Vec<F>> {
    let title = format!("{scenario}, {t}, {mem_mib} MiB guest");
    let mut runs = Vec::new();
    for &case in cases {
        let r = boot_with(scenario, t, mem_mib, case, tweak).and_then(|mut vm| {
            let f = run(&mut vm, case)?;
            vm.shutdown()?;
            Ok(f)
        });
        match r {
            Ok(f) => runs.push(f),
            Err(e) => {
                eprintln!("{}", table(&title, &runs));
                return Err(e.context(format!("{scenario} on {t}, {case} driver")));
            }
        }
    }
    eprintln!("{}", table(&title, &runs));
    Ok(runs)
}

/// One /proc/vmstat counter; an error naming it if the kernel does not have it.
pub fn vmstat_field(v: &BTreeMap<String, u64>, name: &str) -> Result<u64> {
    v.get(name)
        .copied()
        .ok_or_else(|| Error::other(format!("/proc/vmstat has no {name}")))
}

/// One /proc/meminfo field in MiB (rounded down).
pub fn meminfo_mib(vm: &mut Vm, field: &str) -> Result<u64> {
    Ok(vm.meminfo_kb(field)? / 1024)
}

/// A table: a header row and one row per case, columns right-aligned to their widest cell.
pub fn side_by_side(title: &str, header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&width)
            .enumerate()
            .map(|(i, (c, &w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let mut out = format!("{title}\n{}\n", line(header.to_vec()));
    out.push_str(&"-".repeat(width.iter().sum::<usize>() + 3 * (width.len() - 1)));
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_name_their_parameters() {
        assert_eq!(Case::C.to_string(), "C");
        assert_eq!(Case::RUST.to_string(), "Rust");
        assert_eq!(Case::RUST_NO_MIGRATION.to_string(), "Rust migration=0");
        assert_eq!(Case::RUST_BLOCKS.to_string(), "Rust blocks=1");
        let c_off = Case {
            driver: Driver::C,
            migration: false,
            blocks: false,
        };
        assert!(c_off.module_args().is_err());
    }

    #[test]
    fn tables_align() {
        let t = side_by_side(
            "t",
            &["case", "MiB"],
            &[
                vec!["C".into(), "12".into()],
                vec!["Rust".into(), "3".into()],
            ],
        );
        assert_eq!(t, "t\ncase | MiB\n----------\nC    |  12\nRust |   3");
    }
}
