// SPDX-License-Identifier: GPL-2.0
//! The host's own CPU time for the VM: what QEMU spends outside its vCPU threads.
//!
//! A balloon request costs the host its discards (`madvise(MADV_DONTNEED)` per 4 KiB frame on
//! inflate) and the virtqueue handling; under TCG the notification reaches the balloon device
//! through QEMU's event loop, so that work runs on QEMU's main thread (and its helpers), not on
//! the vCPU threads, which run the guest. Their time, less what they spend idle, is how long the
//! host needed for a balloon move: the ceiling no guest can beat on this machine.
//!
//! Read from `/proc/<pid>/task/<tid>/schedstat` (time on the CPU, ns): on this machine the
//! utime/stime split of `stat` is unreliable (a busy TCG vCPU thread showed utime 0), the sum is
//! not needed.

use crate::error::{Context, Error, Result};
use std::fs;
use std::time::Duration;

/// The prefix of QEMU's vCPU thread names (`CPU 0/TCG`, `CPU 1/KVM`).
const VCPU_PREFIX: &str = "CPU ";

/// The first field of a `schedstat` file: time on the CPU, ns.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Whether a thread named `comm` runs a vCPU.
pub fn is_vcpu(comm: &str) -> bool {
    comm.trim_end().starts_with(VCPU_PREFIX)
}

/// The CPU time, ns, of process `pid`'s threads that run no vCPU: the host's side of the VM.
/// Threads that end while they are read are skipped.
pub fn host_side_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in fs::read_dir(&dir).context(format!("reading {dir}"))? {
        let path = entry.context(format!("reading {dir}"))?.path();
        let (Ok(comm), Ok(stat)) = (
            fs::read_to_string(path.join("comm")),
            fs::read_to_string(path.join("schedstat")),
        ) else {
            continue;
        };
        if is_vcpu(&comm) {
            continue;
        }
        total += parse_schedstat(&stat)
            .ok_or_else(|| Error::other(format!("{}/schedstat holds {stat:?}", path.display())))?;
    }
    Ok(total)
}

/// The host's time for a step that took `wall` and `busy_ns` of host-side CPU, less what the
/// host spends in as long without one (`idle_ns_per_s`: the event loop, the QMP polling), seconds.
pub fn step_secs(busy_ns: u64, wall: Duration, idle_ns_per_s: f64) -> f64 {
    (busy_ns as f64 - idle_ns_per_s * wall.as_secs_f64()).max(0.0) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_gives_the_time_on_the_cpu() {
        assert_eq!(
            parse_schedstat("5236912345 11234 872\n"),
            Some(5_236_912_345)
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn vcpu_threads_are_told_from_the_others() {
        assert!(is_vcpu("CPU 0/TCG\n"));
        assert!(is_vcpu("CPU 3/KVM"));
        assert!(!is_vcpu("qemu-system-x86\n"));
        assert!(!is_vcpu("worker"));
    }

    #[test]
    fn a_step_is_its_time_less_the_idle_rate() {
        // 1.5 s of CPU over 2 s with an idle rate of 0.1 s per s: 1.3 s for the step.
        let s = step_secs(1_500_000_000, Duration::from_secs(2), 100_000_000.0);
        assert!((s - 1.3).abs() < 1e-9);
        // Never below zero.
        assert_eq!(step_secs(0, Duration::from_secs(1), 1e9), 0.0);
    }

    #[test]
    fn this_process_has_host_side_time() {
        // The test's own process: its threads are not vCPUs, and it has run.
        assert!(host_side_ns(std::process::id()).unwrap() > 0);
    }
}
