// SPDX-License-Identifier: GPL-2.0
//! The guest side of `rballoon stress`: the background workload, the balloon driver unbound and
//! bound again, fail_page_alloc aimed at the balloon driver, and kmemleak.

use rballoon_harness::{Driver, Error, Result, Vm};
use std::time::{Duration, Instant};

/// Where the workload leaves its state in the guest.
const CHURN_LOG: &str = "/tmp/rb-churn.log";
const COMPACT_COUNT: &str = "/tmp/rb-compact.count";
const STOP: &str = "/tmp/rb-stop";

/// Start, in the background: `rb-memload churn` for `seconds` (chunks up to `max_mib`), and a
/// loop writing `compact_memory` once a second until [`stop_workload`].
pub fn start_workload(vm: &mut Vm, seconds: u64, max_mib: u64, seed: u64) -> Result<()> {
    vm.sh(&format!(
        "rm -f {STOP}; echo 0 > {COMPACT_COUNT}; \
         (rb-memload churn {seconds} {max} {seed}; echo \"exit $?\") > {CHURN_LOG} 2>&1 & \
         (n=0; while [ ! -e {STOP} ]; do echo 1 > /proc/sys/vm/compact_memory; n=$((n+1)); \
         echo $n > {COMPACT_COUNT}; sleep 1; done) >/dev/null 2>&1 &",
        max = max_mib.max(1)
    ))
    .map(drop)
}

/// A corruption the churn found, or its early death, while the run goes on.
pub fn workload_problem(vm: &mut Vm) -> Result<Option<String>> {
    let log = vm.sh(&format!("cat {CHURN_LOG}"))?;
    if log.contains("CORRUPTION") {
        return Ok(Some(format!("memory workload: {}", log.trim())));
    }
    Ok(None)
}

/// What the workload did.
pub struct Workload {
    /// Map/touch/check/unmap rounds.
    pub rounds: u64,
    /// MiB touched.
    pub mib: u64,
    /// `compact_memory` writes.
    pub compactions: u64,
    /// A failure of the workload.
    pub problem: Option<String>,
}

/// Stop the compaction loop, wait (up to `timeout`) for the churn to end and collect its figures.
pub fn stop_workload(vm: &mut Vm, timeout: Duration) -> Result<Workload> {
    vm.sh(&format!("touch {STOP}"))?;
    let t0 = Instant::now();
    let log = loop {
        let log = vm.sh(&format!("cat {CHURN_LOG}"))?;
        if log.contains("exit ") {
            break log;
        }
        if t0.elapsed() > timeout {
            return Ok(Workload {
                rounds: 0,
                mib: 0,
                compactions: 0,
                problem: Some(format!(
                    "memory workload still running {timeout:?} after the end: {}",
                    log.trim()
                )),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let compactions = vm
        .sh(&format!("cat {COMPACT_COUNT}"))?
        .trim()
        .parse()
        .unwrap_or(0);
    Ok(parse_churn(&log, compactions))
}

/// Parse the churn's log: `rb-memload churn: R rounds, M MiB touched, ...` then `exit S`.
fn parse_churn(log: &str, compactions: u64) -> Workload {
    let num_before = |word: &str| -> u64 {
        log.lines()
            .find(|l| l.starts_with("rb-memload churn:"))
            .and_then(|l| {
                let w: Vec<&str> = l.split([' ', ',']).collect();
                let i = w.iter().position(|x| *x == word)?;
                w.get(i.checked_sub(1)?)?.parse().ok()
            })
            .unwrap_or(0)
    };
    let status = log
        .lines()
        .find_map(|l| l.strip_prefix("exit "))
        .map(str::trim)
        .unwrap_or("?");
    Workload {
        rounds: num_before("rounds"),
        mib: num_before("MiB"),
        compactions,
        problem: (status != "0")
            .then(|| format!("memory workload exited {status}: {}", log.trim())),
    }
}

/// The balloon's virtio device name (`virtio2`) under its driver.
fn bound_device(vm: &mut Vm, d: Driver) -> Result<String> {
    let out = vm.sh(&format!("ls /sys/bus/virtio/drivers/{}/", d.sysfs_name()))?;
    out.split_whitespace()
        .find(|n| n.starts_with("virtio"))
        .map(str::to_owned)
        .ok_or_else(|| Error::other(format!("{d} driver is bound to no device: {out:?}")))
}

/// Unbind the driver from its device through sysfs; returns the device name.
pub fn unbind(vm: &mut Vm, d: Driver) -> Result<String> {
    let dev = bound_device(vm, d)?;
    vm.sh(&format!(
        "echo {dev} > /sys/bus/virtio/drivers/{}/unbind",
        d.sysfs_name()
    ))?;
    Ok(dev)
}

/// Bind the driver to `dev` again.
pub fn bind(vm: &mut Vm, d: Driver, dev: &str) -> Result<()> {
    vm.sh(&format!(
        "echo {dev} > /sys/bus/virtio/drivers/{}/bind",
        d.sysfs_name()
    ))
    .map(drop)
}

const FPA: &str = "/sys/kernel/debug/fail_page_alloc";

/// Does the kernel have fail_page_alloc with its stack filter?
pub fn fail_page_alloc_present(vm: &mut Vm) -> Result<bool> {
    Ok(vm.sh_status(&format!("test -e {FPA}/require-start"))?.0 == 0)
}

/// fail_page_alloc aimed at one module: only allocations with the module's code on the stack fail.
#[derive(Default)]
pub struct FailPageAlloc {
    /// Failures armed in the current window.
    armed: u64,
    /// Windows opened.
    pub windows: u64,
    /// Failures injected, over all windows.
    pub hits: u64,
    /// Windows in which nothing was injected.
    pub misses: u64,
}

impl FailPageAlloc {
    /// Fail up to `times` allocations made with `d`'s module code on the stack, with
    /// probability 1/2 each. The defaults would skip every balloon page allocation: they are
    /// order 0 (`min-order`), movable highmem (`ignore-gfp-highmem`) and may reclaim
    /// (`ignore-gfp-wait`).
    pub fn arm(&mut self, vm: &mut Vm, d: Driver, times: u64) -> Result<()> {
        let (start, end) = module_text(vm, d)?;
        vm.sh(&format!(
            "cd {FPA} && echo 0 > probability && echo 0 > min-order && echo N > ignore-gfp-wait && \
             echo N > ignore-gfp-highmem && echo 0 > space && echo 1 > interval && echo 0 > verbose && \
             echo 0 > task-filter && echo 32 > stacktrace-depth && \
             echo {start:#x} > require-start && echo {end:#x} > require-end && \
             echo {times} > times && echo 50 > probability; cd /"
        ))?;
        self.armed = times;
        self.windows += 1;
        Ok(())
    }

    /// Failures still to inject in this window.
    pub fn remaining(&mut self, vm: &mut Vm) -> Result<u64> {
        let t = vm.sh(&format!("cat {FPA}/times"))?;
        // `times` counts down to 0; -1 would mean unlimited, which `arm` never sets.
        Ok(t.trim().parse::<i64>().unwrap_or(0).max(0) as u64)
    }

    /// Stop injecting; count what this window injected.
    pub fn disarm(&mut self, vm: &mut Vm) -> Result<()> {
        if self.armed == 0 {
            return Ok(());
        }
        vm.sh(&format!("echo 0 > {FPA}/probability"))?;
        let left = self.remaining(vm)?;
        let hits = self.armed.saturating_sub(left);
        self.hits += hits;
        if hits == 0 {
            self.misses += 1;
        }
        self.armed = 0;
        Ok(())
    }
}

/// The address range of `d`'s module code, from /proc/kallsyms (text symbols), padded at the end
/// for the last function's body.
fn module_text(vm: &mut Vm, d: Driver) -> Result<(u64, u64)> {
    let out = vm.sh(&format!(
        "grep -i ' t .*\\[{}\\]$' /proc/kallsyms",
        d.module()
    ))?;
    parse_text_range(&out).ok_or_else(|| {
        Error::other(format!(
            "no text symbols of module {} in /proc/kallsyms (is it loaded? KALLSYMS?)",
            d.module()
        ))
    })
}

fn parse_text_range(kallsyms: &str) -> Option<(u64, u64)> {
    let addrs: Vec<u64> = kallsyms
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .filter(|&a| a != 0)
        .collect();
    Some((*addrs.iter().min()?, addrs.iter().max()? + 0x4000))
}

const KMEMLEAK: &str = "/sys/kernel/debug/kmemleak";

/// With kmemleak: scan once and forget what is reported, so the final scan reports only objects
/// leaked during the run.
pub fn kmemleak_baseline(vm: &mut Vm, timeout: Duration) -> Result<()> {
    if vm.sh_status(&format!("test -e {KMEMLEAK}"))?.0 != 0 {
        return Ok(());
    }
    vm.sh_timeout(
        &format!("echo scan > {KMEMLEAK} && echo clear > {KMEMLEAK}"),
        timeout,
    )?;
    Ok(())
}

/// kmemleak's findings.
pub struct Leaks {
    /// New suspects.
    pub total: u64,
    /// The reports whose backtrace goes through a balloon or virtio function.
    pub ours: String,
}

/// With kmemleak: scan and return the new suspects; `None` without kmemleak.
pub fn kmemleak_scan(vm: &mut Vm, timeout: Duration) -> Result<Option<Leaks>> {
    if vm.sh_status(&format!("test -e {KMEMLEAK}"))?.0 != 0 {
        return Ok(None);
    }
    let (_, out) = vm.sh_timeout(
        &format!("echo scan > {KMEMLEAK} && cat {KMEMLEAK}"),
        timeout,
    )?;
    Ok(Some(parse_kmemleak(&out)))
}

fn parse_kmemleak(out: &str) -> Leaks {
    let mut total = 0;
    let mut ours = String::new();
    for report in out.split("unreferenced object").skip(1) {
        total += 1;
        if ["balloon", "virtio", "rballoon"]
            .iter()
            .any(|k| report.contains(k))
        {
            ours.push_str("unreferenced object");
            ours.push_str(report);
        }
    }
    Leaks { total, ours }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_log_parses() {
        let w = parse_churn(
            "rb-memload churn: 12 rounds, 340 MiB touched, 0 mmap failures, 0 bad pages\nexit 0\n",
            7,
        );
        assert_eq!((w.rounds, w.mib, w.compactions), (12, 340, 7));
        assert!(w.problem.is_none());
        let bad = parse_churn("rb-memload: CORRUPTION at 0x1\nrb-memload churn: 1 rounds, 2 MiB touched, 0 mmap failures, 1 bad pages\nexit 2\n", 0);
        assert!(bad.problem.unwrap().contains("exited 2"));
        assert!(parse_churn("Killed\nexit 137\n", 0).problem.is_some());
    }

    #[test]
    fn module_text_range_from_kallsyms() {
        let k = "ffffffffa0001000 t fill_balloon\t[virtio_balloon]\nffffffffa0000000 t init\t[virtio_balloon]\nffffffffa0002f00 T x\t[virtio_balloon]\n";
        assert_eq!(
            parse_text_range(k),
            Some((0xffffffffa0000000, 0xffffffffa0002f00 + 0x4000))
        );
        assert_eq!(parse_text_range(""), None);
        // Hidden addresses (kptr_restrict) are no range.
        assert_eq!(parse_text_range("0000000000000000 t x\t[m]\n"), None);
    }

    #[test]
    fn kmemleak_reports_are_split_and_ours_kept() {
        let out = "unreferenced object 0xffff1 (size 64):\n  backtrace:\n    kmalloc_trace\n    some_init\nunreferenced object 0xffff2 (size 32):\n  backtrace:\n    __kmalloc\n    rballoon::probe\n";
        let l = parse_kmemleak(out);
        assert_eq!(l.total, 2);
        assert!(l.ours.contains("0xffff2") && !l.ours.contains("0xffff1"));
        assert_eq!(parse_kmemleak("").total, 0);
    }
}
