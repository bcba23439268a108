// SPDX-License-Identifier: GPL-2.0
//! The host's side of guest memory: how much of it the QEMU process holds resident.
//!
//! Under TCG (and KVM alike) guest RAM is anonymous memory of the QEMU process, so its resident set
//! grows as the guest first writes pages and shrinks when QEMU discards them (balloon inflation,
//! free page reporting). QEMU runs in the toolchain root without a pid namespace, so the pid in
//! its `-pidfile` is a host pid.

use crate::error::{Context, Error, Result};
use crate::vm::Vm;
use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The host pid of the VM's QEMU process, from its `-pidfile`.
pub fn qemu_pid(vm: &Vm) -> Result<u32> {
    let path = vm.rundir().join("qemu.pid");
    let text = fs::read_to_string(&path).context(format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .map_err(|_| Error::other(format!("{} holds {text:?}, not a pid", path.display())))
}

/// `VmRSS` of process `pid` in kB.
pub fn rss_kb(pid: u32) -> Result<u64> {
    status_kb(pid, "VmRSS:")
}

/// `VmHWM` of process `pid` in kB: the most it has held resident since [`reset_peak_rss`].
pub fn peak_rss_kb(pid: u32) -> Result<u64> {
    status_kb(pid, "VmHWM:")
}

/// Starts a new `VmHWM` for process `pid` from its resident set now (`clear_refs` 5).
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    fs::write(&path, "5").context(format!("writing {path}"))
}

fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).context(format!("reading {path}"))?;
    parse_status_kb(&status, field)
        .ok_or_else(|| Error::other(format!("no {field} line in {path}")))
}

/// The `field` figure (`VmRSS:`, `VmHWM:`) of a /proc/<pid>/status text, in kB.
fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        l.strip_prefix(field)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Guest RAM the VM's QEMU holds in transparent huge pages, kB (`AnonHugePages` of its
/// /proc/<pid>/smaps_rollup; QEMU asks for them on guest RAM with `MADV_HUGEPAGE`). A balloon
/// page discarded inside one splits it, and the rest of it stays resident in small pages.
pub fn qemu_anon_huge_kb(vm: &Vm) -> Result<u64> {
    let path = format!("/proc/{}/smaps_rollup", qemu_pid(vm)?);
    let text = fs::read_to_string(&path).context(format!("reading {path}"))?;
    parse_status_kb(&text, "AnonHugePages:")
        .ok_or_else(|| Error::other(format!("no AnonHugePages line in {path}")))
}

/// The resident set of the VM's QEMU in kB.
pub fn qemu_rss_kb(vm: &Vm) -> Result<u64> {
    rss_kb(qemu_pid(vm)?)
}

/// Sample the VM's QEMU resident set every `every` until `done(kb)` holds or `timeout` passes.
/// Returns the last sample, the smallest one and how long it took (`None` on timeout).
pub fn watch_rss(
    vm: &Vm,
    every: Duration,
    timeout: Duration,
    mut done: impl FnMut(u64) -> bool,
) -> Result<RssWatch> {
    let pid = qemu_pid(vm)?;
    let t0 = Instant::now();
    let mut min = u64::MAX;
    loop {
        let kb = rss_kb(pid)?;
        min = min.min(kb);
        if done(kb) {
            return Ok(RssWatch {
                last_kb: kb,
                min_kb: min,
                took: Some(t0.elapsed()),
            });
        }
        if t0.elapsed() >= timeout {
            return Ok(RssWatch {
                last_kb: kb,
                min_kb: min,
                took: None,
            });
        }
        sleep(every);
    }
}

/// What [`watch_rss`] saw.
#[derive(Clone, Copy, Debug)]
pub struct RssWatch {
    /// The last sample, kB.
    pub last_kb: u64,
    /// The smallest sample, kB.
    pub min_kb: u64,
    /// How long until the condition held; `None` if it never did.
    pub took: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::parse_status_kb;

    #[test]
    fn vmrss_parses() {
        let s = "Name:\tqemu-system-x86\nVmPeak:\t 3000000 kB\nVmHWM:\t  900000 kB\nVmRSS:\t  812345 kB\nRssAnon:\t 800000 kB\n";
        assert_eq!(parse_status_kb(s, "VmRSS:"), Some(812345));
        assert_eq!(parse_status_kb(s, "VmHWM:"), Some(900000));
        assert_eq!(parse_status_kb("Name:\tkthreadd\n", "VmRSS:"), None);
    }
}
