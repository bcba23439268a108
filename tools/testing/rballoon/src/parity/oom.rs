// SPDX-License-Identifier: GPL-2.0
//! Deflate on OOM: with most of the guest in the balloon, a memory hog asks for more than is
//! free. With `VIRTIO_BALLOON_F_DEFLATE_ON_OOM` the driver's OOM notifier gives balloon pages back
//! (256 per call) instead of the OOM killer taking a process: the hog finishes, the guest lives
//! on, the balloon is smaller, and QEMU's `actual` says so.

use super::{meminfo_mib, vmstat_field, Case};
use crate::error::{Context, Error, Result};
use crate::guestmem::{self, HogOutcome};
use crate::scenario::{balloon_step, observe, Step};
use crate::vm::Vm;
use std::time::{Duration, Instant};

/// Memory left free when the balloon is inflated, MiB.
const LEFT_FREE_MIB: u64 = 128;

/// How much more than is free the hog asks for, MiB: what the balloon has to give back.
const OVER_MIB: u64 = 256;

/// Bound on the inflation and on the hog.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

/// What the kernel prints when the OOM killer runs.
const OOM_KILLER_MARKS: &[&str] = &["invoked oom-killer", "Out of memory: Killed process"];

/// What one OOM run measured.
#[derive(Clone, Debug)]
pub struct Figures {
    /// The driver case.
    pub case: Case,
    /// The balloon inflated, before the hog.
    pub inflated: Step,
    /// MemFree before the hog, MiB.
    pub free_mib: u64,
    /// MiB the hog asked for.
    pub hog_mib: u64,
    /// How it went.
    pub hog: HogOutcome,
    /// How long it ran, seconds.
    pub hog_secs: f64,
    /// The balloon afterwards.
    pub after: Step,
    /// `balloon_deflate` events while the hog ran (guest pages).
    pub deflated_pages: u64,
    /// Whether the kernel log shows the OOM killer at work.
    pub oom_killer: bool,
}

impl Figures {
    /// How much the balloon shrank, MiB.
    pub fn shrunk_mib(&self) -> u64 {
        self.inflated
            .balloon_kb
            .saturating_sub(self.after.balloon_kb)
            / 1024
    }

    /// The row of [`table`].
    pub fn row(&self) -> Vec<String> {
        let mib = |b: u64| (b >> 20).to_string();
        vec![
            self.case.to_string(),
            (self.inflated.balloon_kb / 1024).to_string(),
            self.free_mib.to_string(),
            self.hog_mib.to_string(),
            if self.hog.completed() {
                "completed".into()
            } else {
                format!("status {} at {} MiB", self.hog.status, self.hog.reached_mib)
            },
            format!("{:.1}", self.hog_secs),
            (self.after.balloon_kb / 1024).to_string(),
            mib(self.after.actual),
            self.shrunk_mib().to_string(),
            (self.deflated_pages / 256).to_string(),
            if self.oom_killer { "yes" } else { "no" }.into(),
        ]
    }
}

/// The figures of several runs, side by side.
pub fn table(title: &str, runs: &[Figures]) -> String {
    super::side_by_side(
        title,
        &[
            "driver",
            "balloon MiB",
            "free MiB",
            "hog MiB",
            "hog",
            "hog s",
            "balloon after",
            "actual after",
            "shrunk MiB",
            "deflated MiB",
            "OOM killer",
        ],
        &runs.iter().map(Figures::row).collect::<Vec<_>>(),
    )
}

fn balloon_deflate(vm: &mut Vm) -> Result<u64> {
    vmstat_field(&vm.vmstat()?, "balloon_deflate")
}

/// Run the scenario on `vm` (its driver loaded as `case`, the balloon offering
/// `deflate-on-oom`). Errors if the balloon could not be inflated, if the guest stopped answering,
/// or if QEMU and the guest disagree about the balloon afterwards; whether the hog finished, the
/// balloon shrank and the OOM killer stayed away is in the figures.
pub fn run(vm: &mut Vm, case: Case) -> Result<Figures> {
    let what = format!("deflate on OOM with the {case} driver");
    if !vm
        .config()
        .balloon
        .as_ref()
        .is_some_and(|b| b.deflate_on_oom)
    {
        return Err(Error::other(format!(
            "{what}: the VM's balloon does not offer deflate-on-oom"
        )));
    }
    let mem_mib = vm.config().mem_mib;
    let free = meminfo_mib(vm, "MemFree")?;
    let balloon_mib = free
        .checked_sub(LEFT_FREE_MIB)
        .filter(|&m| m >= OVER_MIB)
        .ok_or_else(|| Error::other(format!("{what}: only {free} MiB free")))?;
    let inflated = balloon_step(vm, "inflate", mem_mib - balloon_mib, STEP_TIMEOUT)?;
    inflated.check().context(&what)?;
    let free_mib = meminfo_mib(vm, "MemFree")?;
    let hog_mib = free_mib + OVER_MIB;
    let d0 = balloon_deflate(vm)?;
    let t0 = Instant::now();
    let hog = guestmem::hog(vm, hog_mib, 16, STEP_TIMEOUT).context(&what)?;
    let hog_secs = t0.elapsed().as_secs_f64();
    // The guest must still answer, whatever became of the hog.
    vm.sh("true")
        .context(format!("{what}: the guest after the hog"))?;
    let deflated_pages = balloon_deflate(vm)? - d0;
    let after = observe(vm, "after hog", hog_secs)?;
    after.check().context(&what)?;
    let log = vm.serial_log();
    let oom_killer = OOM_KILLER_MARKS.iter().any(|m| log.contains(m));
    Ok(Figures {
        case,
        inflated,
        free_mib,
        hog_mib,
        hog,
        hog_secs,
        after,
        deflated_pages,
        oom_killer,
    })
}
