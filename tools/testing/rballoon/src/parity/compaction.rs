// SPDX-License-Identifier: GPL-2.0
//! Compaction with an inflated balloon: fragment guest memory so that the balloon's pages end up
//! scattered through it, compact, and count the 2 MiB huge pages the guest can then allocate.
//!
//! The fragmenter (`rbmem frag`) writes nearly all free memory and gives back about one page in
//! two, chosen at random (a fixed period can hide every hole from compaction's free scanner, see
//! `rbmem.c`); the balloon then inflates by what was given back, so its pages fill those holes;
//! the fragmenter exits and leaves the pages between them free. Without balloon migration the balloon's
//! pages pin nearly every 2 MiB block; with it, compaction (`/proc/sys/vm/compact_memory`, and the
//! huge page allocation itself) moves them together. Throughout, the balloon must stay the size
//! QEMU thinks it is.

use super::{meminfo_mib, vmstat_field, Case};
use crate::config::VmConfig;
use crate::error::{Context, Error, Result};
use crate::guestmem::{self, Held};
use crate::hostmem;
use crate::scenario::{balloon_step, observe, Step};
use crate::vm::Vm;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Free memory left outside the fragmented range, MiB: room for the guest to work in.
const HEADROOM_MIB: u64 = 96;

/// Bound on writing the fragmenter's memory, on one balloon move, on one compaction and on the
/// huge page allocation.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// The balloon for this scenario: without free page reporting. While a reporting pass holds
/// free blocks, `compact_memory` on a virtio-mmio guest ended early in about half of the runs,
/// for the C and the Rust driver alike (a few hundred to a few thousand balloon pages moved
/// instead of ~55,000; without reporting, 55,000 in every run): the free scanner finds no target
/// before the scanners meet and compact_zone() gives up on the zone. That is a property of mm,
/// not of a balloon driver's migrate hook, which is what this scenario measures. Measured while
/// the fragmenter still left a hole every other page, which the free scanner's stride can skip
/// entirely (see `rbmem frag`): reporting, by taking whole free blocks, makes that stride grow
/// sooner, so the two may be one cause. Not measured again since.
pub fn configure(cfg: &mut VmConfig) {
    if let Some(b) = cfg.balloon.as_mut() {
        b.free_page_reporting = false;
    }
}

/// At most this many `compact_memory` writes ...
const MAX_COMPACT_ROUNDS: u32 = 4;

/// ... each after one that migrated at least this many balloon pages (2 MiB).
const PROGRESS_PAGES: u64 = 512;

/// The /proc/vmstat counters read around each `compact_memory` write: what the two scanners
/// looked at (the write's own pass, then kcompactd's, running beside it), what they isolated, and
/// what migration did. `balloon_migrate` last.
pub const COMPACT_COUNTERS: [&str; 10] = [
    "compact_stall",
    "compact_daemon_wake",
    "compact_migrate_scanned",
    "compact_free_scanned",
    "compact_isolated",
    "compact_daemon_migrate_scanned",
    "compact_daemon_free_scanned",
    "pgmigrate_success",
    "pgmigrate_fail",
    "balloon_migrate",
];

/// The bound on the huge page allocation, the same for every driver: with the balloon pinned the
/// kernel may retry compaction for minutes under TCG, so what the pool has then is the figure.
pub const HUGEPAGE_BOUND_SECS: u64 = 60;

/// One `compact_memory` write: how much each of [`COMPACT_COUNTERS`] rose over it.
#[derive(Clone, Debug)]
pub struct CompactWrite(pub [u64; COMPACT_COUNTERS.len()]);

impl CompactWrite {
    fn between(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Result<Self> {
        let mut d = [0; COMPACT_COUNTERS.len()];
        for (d, name) in d.iter_mut().zip(COMPACT_COUNTERS) {
            *d = vmstat_field(after, name)?.saturating_sub(vmstat_field(before, name)?);
        }
        Ok(CompactWrite(d))
    }

    /// Balloon pages migrated by this write.
    pub fn balloon_migrated(&self) -> u64 {
        self.0[COMPACT_COUNTERS.len() - 1]
    }
}

/// What fragmenting and inflating into the holes measured: the first half of [`run`], and all of
/// [`inflate_into_holes`].
#[derive(Clone, Debug)]
pub struct Inflation {
    /// The driver case.
    pub case: Case,
    /// MiB the fragmenter wrote.
    pub frag_mib: u64,
    /// MiB it gave back (and the balloon then took).
    pub holes_mib: u64,
    /// The balloon after inflating (and before compaction).
    pub inflated: Step,
    /// Free 2 MiB blocks ([`free_2m_blocks`]) with the fragmenter's holes in memory, before the
    /// balloon inflates ...
    pub free_2m_fragmented: u64,
    /// ... and after it inflated by what the fragmenter gave back (an inflation that takes the
    /// holes first, as order-0 allocations do, leaves these blocks alone).
    pub free_2m_inflated: u64,
    /// Free memory, MiB, in blocks smaller than 2 MiB (MemFree less [`free_2m_blocks`]) with
    /// the fragmenter's holes in memory ...
    pub small_free_fragmented: u64,
    /// ... and after the balloon inflated: what a balloon that took blocks while smaller free
    /// pages were left leaves behind.
    pub small_free_inflated: u64,
    /// The host's side, MiB: QEMU's resident guest RAM and the part of it in transparent huge
    /// pages ([`hostmem::qemu_anon_huge_kb`]) with the fragmenter's holes in memory ...
    pub host_rss_fragmented: u64,
    pub host_thp_fragmented: u64,
    /// ... and after the balloon inflated: what the host gained, and how many of its huge pages
    /// the balloon's discards split.
    pub host_rss_inflated: u64,
    pub host_thp_inflated: u64,
}

impl Inflation {
    /// Free 2 MiB blocks the balloon's inflation took.
    pub fn free_2m_taken(&self) -> u64 {
        self.free_2m_fragmented
            .saturating_sub(self.free_2m_inflated)
    }

    /// Of those, how many it took while smaller free pages were left (counted in 2 MiB of them):
    /// what a balloon that fills the holes first, as order-0 allocations do, keeps near zero.
    /// Blocks taken because the holes ran out are not counted: how much free memory a guest has
    /// outside its free blocks varies from boot to boot by more than the holes' margin (392 and
    /// 396 MiB for 430 MiB of holes, the C driver taking 14 blocks), so the blocks taken alone
    /// tell more of the boot than of the driver.
    pub fn free_2m_taken_early(&self) -> u64 {
        self.free_2m_taken().min(self.small_free_inflated / 2)
    }

    /// The row of [`inflation_table`].
    pub fn row(&self) -> Vec<String> {
        vec![
            self.case.to_string(),
            format!("{}/{}", self.holes_mib, self.frag_mib),
            format!("{:.0}", self.inflated.balloon_kb as f64 / 1024.0),
            format!("{}/{}", self.free_2m_fragmented, self.free_2m_inflated),
            format!(
                "{}/{}",
                self.small_free_fragmented, self.small_free_inflated
            ),
            self.free_2m_taken_early().to_string(),
            format!("{}/{}", self.host_rss_fragmented, self.host_rss_inflated),
            format!("{}/{}", self.host_thp_fragmented, self.host_thp_inflated),
        ]
    }
}

/// The inflation figures of several runs, side by side.
pub fn inflation_table(title: &str, runs: &[Inflation]) -> String {
    super::side_by_side(
        title,
        &[
            "driver",
            "holes/frag MiB",
            "balloon MiB",
            "free 2M: fragmented/inflated",
            "small free MiB",
            "2M taken early",
            "host RSS MiB",
            "host THP MiB",
        ],
        &runs.iter().map(Inflation::row).collect::<Vec<_>>(),
    )
}

/// What one compaction run measured.
#[derive(Clone, Debug)]
pub struct Figures {
    /// Fragmenting and inflating into the holes (with the driver case).
    pub inflation: Inflation,
    /// `balloon_migrate` events from inflating until just before `compact_memory`.
    pub migrated_before: u64,
    /// `balloon_migrate` events during the `compact_memory` writes.
    pub migrated_compact: u64,
    /// How many `compact_memory` writes it took until one moved (next to) nothing.
    pub compact_rounds: u32,
    /// How long the `compact_memory` writes took, seconds.
    pub compact_secs: f64,
    /// The balloon after compaction.
    pub compacted: Step,
    /// Huge pages asked for: what fits in free memory after compaction.
    pub hugepages_asked: u64,
    /// 2 MiB huge pages the guest allocated afterwards (`nr_hugepages` read back).
    pub hugepages: u64,
    /// How long that allocation took, seconds.
    pub hugepage_secs: f64,
    /// `balloon_migrate` events during the huge page allocation.
    pub migrated_hugepages: u64,
    /// The balloon after the huge page allocation.
    pub after_hugepages: Step,
    /// Each `compact_memory` write's counters.
    pub writes: Vec<CompactWrite>,
    /// Free 2 MiB blocks before the first `compact_memory` write, the fragmenter gone.
    pub free_2m_compact: u64,
}

impl Figures {
    /// All balloon migrations of the run.
    pub fn migrated(&self) -> u64 {
        self.migrated_before + self.migrated_compact + self.migrated_hugepages
    }

    /// The row of [`table`].
    pub fn row(&self) -> Vec<String> {
        let mib = |s: &Step| format!("{:.0}", s.balloon_kb as f64 / 1024.0);
        let i = &self.inflation;
        vec![
            i.case.to_string(),
            format!("{}/{}", i.holes_mib, i.frag_mib),
            mib(&i.inflated),
            mib(&self.after_hugepages),
            self.migrated_compact.to_string(),
            self.migrated().to_string(),
            self.compact_rounds.to_string(),
            format!("{:.1}", self.compact_secs),
            format!("{}/{}", self.hugepages, self.hugepages_asked),
            format!("{:.1}", self.hugepage_secs),
            format!("{}/{}", i.host_rss_fragmented, i.host_rss_inflated),
            format!("{}/{}", i.host_thp_fragmented, i.host_thp_inflated),
        ]
    }
}

/// The figures of several runs, side by side, then each run's `compact_memory` writes.
pub fn table(title: &str, runs: &[Figures]) -> String {
    let mut out = summary(title, runs);
    let mut header = vec![
        "driver",
        "free 2M: fragmented",
        "inflated",
        "compact",
        "small free MiB",
        "write",
    ];
    header.extend(COMPACT_COUNTERS);
    let rows: Vec<Vec<String>> = runs
        .iter()
        .flat_map(|f| {
            let inf = &f.inflation;
            f.writes.iter().enumerate().map(move |(i, w)| {
                let mut r = vec![
                    inf.case.to_string(),
                    inf.free_2m_fragmented.to_string(),
                    inf.free_2m_inflated.to_string(),
                    f.free_2m_compact.to_string(),
                    format!("{}/{}", inf.small_free_fragmented, inf.small_free_inflated),
                    (i + 1).to_string(),
                ];
                r.extend(w.0.iter().map(u64::to_string));
                r
            })
        })
        .collect();
    out.push('\n');
    out.push_str(&super::side_by_side(
        "compact_memory writes (vmstat deltas)",
        &header,
        &rows,
    ));
    out
}

fn summary(title: &str, runs: &[Figures]) -> String {
    super::side_by_side(
        title,
        &[
            "driver",
            "holes/frag MiB",
            "balloon MiB",
            "balloon after",
            "migrated (compact)",
            "migrated (all)",
            "compactions",
            "compact s",
            "2M hugepages",
            &format!("hugepage s (bound {HUGEPAGE_BOUND_SECS})"),
            "host RSS MiB",
            "host THP MiB",
        ],
        &runs.iter().map(Figures::row).collect::<Vec<_>>(),
    )
}

fn balloon_migrate(vm: &mut Vm) -> Result<u64> {
    vmstat_field(&vm.vmstat()?, "balloon_migrate")
}

/// Free 2 MiB blocks in the guest: `/proc/buddyinfo` blocks of order 9 and up, counted in 2 MiB.
pub fn free_2m_blocks(vm: &mut Vm) -> Result<u64> {
    let out = vm.sh("cat /proc/buddyinfo")?;
    let mut blocks = 0;
    for line in out.lines() {
        // "Node 0, zone   Normal    n0 n1 ... n10"
        let counts: Vec<u64> = line
            .split_whitespace()
            .skip(4)
            .filter_map(|c| c.parse().ok())
            .collect();
        for (order, n) in counts.iter().enumerate().skip(9) {
            blocks += n << (order - 9);
        }
    }
    Ok(blocks)
}

/// Free memory outside the `blocks` free 2 MiB blocks just counted, MiB (both read racily: an
/// estimate).
fn small_free_mib(vm: &mut Vm, blocks: u64) -> Result<u64> {
    Ok(meminfo_mib(vm, "MemFree")?.saturating_sub(2 * blocks))
}

/// Check that the balloon has the size it had after inflating and that QEMU agrees.
fn check_balloon(inflated: &Step, now: &Step) -> Result<()> {
    now.check()?;
    if now.balloon_kb != inflated.balloon_kb || now.actual != inflated.actual {
        return Err(Error::other(format!(
            "balloon changed during {}: Balloon: {} -> {} kB, QEMU actual {} -> {} bytes",
            now.name, inflated.balloon_kb, now.balloon_kb, inflated.actual, now.actual
        )));
    }
    Ok(())
}

/// Fragment the guest's memory, inflate the balloon by what the fragmenter gave back, measure,
/// and end the fragmenter; also `balloon_migrate` from before the inflation.
fn fragment_and_inflate(vm: &mut Vm, case: Case, what: &str) -> Result<(Inflation, u64)> {
    let mem_mib = vm.config().mem_mib;
    let free = meminfo_mib(vm, "MemFree")?;
    let frag_mib = free
        .checked_sub(HEADROOM_MIB)
        .filter(|&m| m >= 64)
        .ok_or_else(|| {
            Error::other(format!(
                "{what}: only {free} MiB free, too little to fragment"
            ))
        })?;
    let frag = Held::frag(vm, frag_mib, 2, STEP_TIMEOUT).context(what)?;
    let holes_mib = frag_mib - frag.report().kept_mib;
    let m0 = balloon_migrate(vm)?;
    let free_2m_fragmented = free_2m_blocks(vm)?;
    let small_free_fragmented = small_free_mib(vm, free_2m_fragmented)?;
    let host_rss_fragmented = hostmem::qemu_rss_kb(vm)? / 1024;
    let host_thp_fragmented = hostmem::qemu_anon_huge_kb(vm)? / 1024;
    let inflated = balloon_step(vm, "inflate", mem_mib - holes_mib, STEP_TIMEOUT)?;
    inflated.check().context(what)?;
    let free_2m_inflated = free_2m_blocks(vm)?;
    let small_free_inflated = small_free_mib(vm, free_2m_inflated)?;
    let host_rss_inflated = hostmem::qemu_rss_kb(vm)? / 1024;
    let host_thp_inflated = hostmem::qemu_anon_huge_kb(vm)? / 1024;
    frag.release(vm).context(what)?;
    let inflation = Inflation {
        case,
        frag_mib,
        holes_mib,
        inflated,
        free_2m_fragmented,
        free_2m_inflated,
        small_free_fragmented,
        small_free_inflated,
        host_rss_fragmented,
        host_thp_fragmented,
        host_rss_inflated,
        host_thp_inflated,
    };
    Ok((inflation, m0))
}

/// The first half of the scenario alone on `vm` (its driver loaded as `case`): fragment, inflate
/// into the holes, measure which free blocks the balloon took. For the inflation policy, without
/// the compaction and the huge page allocation that take most of [`run`]'s time.
pub fn inflate_into_holes(vm: &mut Vm, case: Case) -> Result<Inflation> {
    let what = format!("inflating into the holes with the {case} driver");
    fragment_and_inflate(vm, case, &what).map(|(inflation, _)| inflation)
}

/// Run the scenario on `vm` (its driver loaded as `case`); see the module documentation.
///
/// Errors if the balloon and QEMU disagree at any point, if the balloon's size changes, or if
/// `balloon_migrate` contradicts the case: it must rise during the compaction with migration, and
/// must not move at all without. Comparing huge page counts between cases is the caller's.
pub fn run(vm: &mut Vm, case: Case) -> Result<Figures> {
    let what = format!("compaction with the {case} driver");
    let (inflation, m0) = fragment_and_inflate(vm, case, &what)?;
    let m1 = balloon_migrate(vm)?;

    // One `compact_memory` pass leaves work behind (pages it freed become targets only for the
    // next one): write again while a pass still moves balloon pages, as an operator would.
    let free_2m_compact = free_2m_blocks(vm)?;
    let t0 = Instant::now();
    let mut compact_rounds = 0;
    let mut writes = Vec::new();
    let mut before = vm.vmstat()?;
    loop {
        compact_rounds += 1;
        vm.sh_timeout("echo 1 > /proc/sys/vm/compact_memory", STEP_TIMEOUT)
            .and_then(|(st, out)| match st {
                0 => Ok(()),
                _ => Err(Error::other(format!(
                    "compact_memory write failed ({st}): {out}"
                ))),
            })
            .context(&what)?;
        let now = vm.vmstat()?;
        let write = CompactWrite::between(&before, &now)?;
        let moved = write.balloon_migrated();
        writes.push(write);
        before = now;
        if moved < PROGRESS_PAGES || compact_rounds == MAX_COMPACT_ROUNDS {
            break;
        }
    }
    let compact_secs = t0.elapsed().as_secs_f64();
    let m2 = balloon_migrate(vm)?;
    let compacted = observe(vm, "compaction", compact_secs)?;
    check_balloon(&inflation.inflated, &compacted).context(&what)?;

    // Ask for as many as fit in free memory but a little: the kernel stops at the first failure,
    // and using up every page would make the next allocation deflate the balloon on OOM.
    let hugepages_asked = meminfo_mib(vm, "MemFree")?.saturating_sub(32) / 2;
    let t0 = Instant::now();
    let (st, out) = vm.sh_timeout(
        &format!(
            // The pool grows page by page and stops at a signal: see HUGEPAGE_BOUND_SECS.
            "timeout {HUGEPAGE_BOUND_SECS} sh -c 'echo {hugepages_asked} > /proc/sys/vm/nr_hugepages'; \
             cat /proc/sys/vm/nr_hugepages"
        ),
        STEP_TIMEOUT,
    )?;
    let hugepage_secs = t0.elapsed().as_secs_f64();
    let hugepages = match (st, guestmem::last_line(&out).parse::<u64>()) {
        (0, Ok(n)) => n,
        _ => {
            return Err(Error::other(format!(
                "{what}: allocating huge pages ({st}): {out:?}"
            )))
        }
    };
    let m3 = balloon_migrate(vm)?;
    // Only agreement here: should memory still run out, deflating on OOM is right.
    let after_hugepages = observe(vm, "huge pages", hugepage_secs)?;
    after_hugepages.check().context(&what)?;
    vm.sh("echo 0 > /proc/sys/vm/nr_hugepages")?;

    let f = Figures {
        inflation,
        migrated_before: m1 - m0,
        migrated_compact: m2 - m1,
        compact_rounds,
        compact_secs,
        compacted,
        hugepages_asked,
        hugepages,
        hugepage_secs,
        migrated_hugepages: m3 - m2,
        after_hugepages,
        writes,
        free_2m_compact,
    };
    if case.migration && f.migrated_compact == 0 {
        return Err(Error::other(format!(
            "{what}: balloon_migrate did not rise during compact_memory ({m1} before and after)"
        )));
    }
    if !case.migration && f.migrated() != 0 {
        return Err(Error::other(format!(
            "{what}: {} balloon pages migrated although the driver refuses migration",
            f.migrated()
        )));
    }
    Ok(f)
}
