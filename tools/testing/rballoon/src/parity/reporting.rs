// SPDX-License-Identifier: GPL-2.0
//! Free page reporting seen from the host: the guest writes most of its memory and frees it, and
//! QEMU's resident set must fall by most of that once the driver has reported the free pages
//! (mm waits about 2 s after pages are freed, then reports a share of each free list per pass).

use super::{meminfo_mib, Case};
use crate::error::{Context, Error, Result};
use crate::guestmem;
use crate::hostmem::{peak_rss_kb, qemu_pid, qemu_rss_kb, reset_peak_rss, watch_rss};
use crate::vm::Vm;
use crate::VmConfig;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Free memory left untouched, MiB.
const HEADROOM_MIB: u64 = 160;

/// Bound on writing the memory.
const TOUCH_TIMEOUT: Duration = Duration::from_secs(120);

/// How often QEMU's resident set is sampled.
const SAMPLE: Duration = Duration::from_millis(250);

/// QEMU's resident set must fall by this share of what the guest freed ...
pub const REPORT_PERCENT: u64 = 75;

/// ... within this bound (mm reports a sixteenth of each free list, at least two batches, per
/// pass, passes 2 s apart).
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(45);

/// What one reporting run measured.
#[derive(Clone, Debug)]
pub struct Figures {
    /// The driver case.
    pub case: Case,
    /// MiB the guest wrote and freed.
    pub freed_mib: u64,
    /// QEMU's resident set before, kB.
    pub rss_before_kb: u64,
    /// Right after the guest freed the memory, kB.
    pub rss_peak_kb: u64,
    /// The smallest sample within the bound, kB.
    pub rss_after_kb: u64,
    /// How long until the resident set had fallen by the wanted share of `freed_mib`; `None` if
    /// it did not within the bound.
    pub secs: Option<f64>,
    /// The share asked for, percent.
    pub want_percent: u64,
}

impl Figures {
    /// How far the resident set fell from its peak, MiB.
    pub fn drop_mib(&self) -> u64 {
        self.rss_peak_kb.saturating_sub(self.rss_after_kb) / 1024
    }

    /// How far it rose while the guest wrote, MiB.
    pub fn rise_mib(&self) -> u64 {
        self.rss_peak_kb.saturating_sub(self.rss_before_kb) / 1024
    }

    /// The row of [`table`].
    pub fn row(&self) -> Vec<String> {
        let mib = |kb: u64| (kb / 1024).to_string();
        vec![
            self.case.to_string(),
            self.freed_mib.to_string(),
            mib(self.rss_before_kb),
            mib(self.rss_peak_kb),
            mib(self.rss_after_kb),
            format!(
                "{} ({}%)",
                self.drop_mib(),
                self.drop_mib() * 100 / self.freed_mib
            ),
            self.secs
                .map_or_else(|| "not reached".into(), |s| format!("{s:.1}")),
        ]
    }
}

/// The figures of several runs, side by side.
pub fn table(title: &str, runs: &[Figures]) -> String {
    let want = runs.first().map_or(0, |f| f.want_percent);
    let secs = format!("s to {want}%");
    super::side_by_side(
        title,
        &[
            "driver",
            "freed MiB",
            "RSS before MiB",
            "RSS peak MiB",
            "RSS after MiB",
            "drop MiB",
            secs.as_str(),
        ],
        &runs.iter().map(Figures::row).collect::<Vec<_>>(),
    )
}

/// Wait (up to 15 s) until QEMU's resident set holds still: two samples a second apart within
/// 4 MiB, so that boot-time work does not count as the guest's.
fn settled_rss(vm: &Vm) -> Result<u64> {
    let t0 = Instant::now();
    let mut last = qemu_rss_kb(vm)?;
    loop {
        sleep(Duration::from_secs(1));
        let now = qemu_rss_kb(vm)?;
        if now.abs_diff(last) <= 4096 || t0.elapsed() > Duration::from_secs(15) {
            return Ok(now);
        }
        last = now;
    }
}

/// The VM for this scenario. The debug guest poisons free pages (`page_poison=1`), and QEMU does
/// not discard reported pages while the guest asks for a poison value other than zero (it must
/// keep the pattern): there the scenario boots with `page_poison=0`, and page reporting discards.
pub fn configure(cfg: &mut VmConfig) {
    if cfg.paths.is_debug() {
        cfg.append_arg("page_poison=0");
    }
}

/// Memory the guest wrote and freed, and QEMU's resident set around it.
#[derive(Clone, Copy, Debug)]
pub struct Freed {
    /// MiB written and freed.
    pub mib: u64,
    /// QEMU's resident set before, kB.
    pub rss_before_kb: u64,
    /// At most while the guest wrote, kB.
    pub rss_peak_kb: u64,
}

impl Freed {
    /// `percent` of what was freed, kB.
    pub fn share_kb(&self, percent: u64) -> u64 {
        (self.mib << 10) * percent / 100
    }

    /// An error if writing the memory did not make QEMU's resident set grow by `percent` of it:
    /// a fall by that share would then mean nothing.
    fn check_grew(&self, what: &str, percent: u64) -> Result<()> {
        if self.rss_peak_kb < self.rss_before_kb + self.share_kb(percent) {
            return Err(Error::other(format!(
                "{what}: QEMU's RSS only went from {} to {} MiB while the guest wrote {} MiB",
                self.rss_before_kb >> 10,
                self.rss_peak_kb >> 10,
                self.mib
            )));
        }
        Ok(())
    }
}

/// Write all free memory of `vm` (its driver loaded as `case`) but a headroom, and free it.
///
/// Errors if writing the memory did not make QEMU's resident set grow by at least
/// `want_percent` of it: a fall by that share would then mean nothing.
pub fn write_and_free(vm: &mut Vm, case: Case, want_percent: u64) -> Result<Freed> {
    let (what, mib, rss_before_kb) = prepare(vm, case)?;
    // The peak is what QEMU held at most while the guest wrote: by the time the command is back
    // (seconds later on the debug guest) reporting may have discarded much of it already.
    let pid = qemu_pid(vm)?;
    reset_peak_rss(pid)?;
    guestmem::touch(vm, mib, TOUCH_TIMEOUT).context(&what)?;
    let f = Freed {
        mib,
        rss_before_kb,
        rss_peak_kb: peak_rss_kb(pid)?.max(qemu_rss_kb(vm)?),
    };
    f.check_grew(&what, want_percent)?;
    Ok(f)
}

/// What the scenario is called, how much memory to write (all free memory but a headroom), MiB,
/// and QEMU's resident set before, kB.
fn prepare(vm: &mut Vm, case: Case) -> Result<(String, u64, u64)> {
    let what = format!("free page reporting with the {case} driver");
    let free = meminfo_mib(vm, "MemFree")?;
    let mib = free
        .checked_sub(HEADROOM_MIB)
        .filter(|&m| m >= 64)
        .ok_or_else(|| {
            Error::other(format!("{what}: only {free} MiB free, too little to write"))
        })?;
    Ok((what, mib, settled_rss(vm)?))
}

/// Write all free memory of `vm` (its driver loaded as `case`) but a headroom, and keep it: the
/// caller frees it ([`guestmem::Held::end`]) while it watches QEMU, so that it sees reporting from
/// its start even on a guest slow to answer. The peak is QEMU's resident set once written.
///
/// Errors as [`write_and_free`].
pub fn write_and_hold(
    vm: &mut Vm,
    case: Case,
    want_percent: u64,
) -> Result<(guestmem::Held, Freed)> {
    let (what, mib, rss_before_kb) = prepare(vm, case)?;
    let held = guestmem::Held::hold(vm, mib, TOUCH_TIMEOUT).context(&what)?;
    let f = Freed {
        mib,
        rss_before_kb,
        rss_peak_kb: qemu_rss_kb(vm)?,
    };
    if let Err(e) = f.check_grew(&what, want_percent) {
        let _ = held.release(vm);
        return Err(e);
    }
    Ok((held, f))
}

/// Run the scenario on `vm` (its driver loaded as `case`): write all free memory but a headroom,
/// free it, and watch QEMU's resident set for up to `timeout` until it has fallen by
/// `want_percent` of what was freed.
///
/// Errors as [`write_and_free`]; whether the fall came is in the figures, for the caller to
/// judge next to the other driver's.
pub fn run(vm: &mut Vm, case: Case, want_percent: u64, timeout: Duration) -> Result<Figures> {
    let f = write_and_free(vm, case, want_percent)?;
    let want_kb = f.share_kb(want_percent);
    let w = watch_rss(vm, SAMPLE, timeout, |kb| kb + want_kb <= f.rss_peak_kb)?;
    Ok(Figures {
        case,
        freed_mib: f.mib,
        rss_before_kb: f.rss_before_kb,
        rss_peak_kb: f.rss_peak_kb,
        rss_after_kb: w.min_kb,
        secs: w.took.map(|d| d.as_secs_f64()),
        want_percent,
    })
}
