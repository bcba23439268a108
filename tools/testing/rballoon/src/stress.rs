// SPDX-License-Identifier: GPL-2.0
//! `rballoon stress`: for a fixed time the host moves the balloon target at random while the guest
//! churns memory (THP, page contents checked), compacts memory every second and reports free
//! pages; interleaved with driver unload/reload and device removal with the balloon inflated, an
//! OOM hog against deflate-on-OOM, and fail_page_alloc failing the balloon's own allocations.
//! At the end the balloon must deflate completely with the kernel's accounting back where it was
//! at boot, no splat, and the guest answering.

use crate::stress_guest::{self as guest, FailPageAlloc};
use rballoon_harness::scenario::PAGE;
use rballoon_harness::{Context, Driver, Error, Result, Transport, Vm, VmConfig};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// What one stress run does.
#[derive(Clone, Debug)]
pub struct Opts {
    /// The driver under test.
    pub driver: Driver,
    /// How long the random phase lasts.
    pub seconds: u64,
    /// Seed of the host's choices and the guest workload's.
    pub seed: u64,
    /// Guest memory.
    pub mem_mib: u64,
    /// PCI or MMIO.
    pub transport: Transport,
}

/// The least the balloon must hold, MiB, when the driver is unloaded or its device removed, and
/// when the OOM hog starts: with less, an action "with the balloon inflated" tests an empty one.
const MIN_INFLATED_MIB: u64 = 32;

/// Balloon pages that may be left when the OOM killer runs although the driver deflates on OOM:
/// the OOM notifier finds none to give back only when the balloon is empty or every page left is
/// isolated by a compaction migrating it (at most 32 at a time); rounded up to what one
/// notification gives back (256 pages).
const OOM_KILL_LEFT_PAGES: u64 = 256;

/// xorshift64*: small, seedable, reproducible across runs and platforms.
pub struct Rng(u64);

impl Rng {
    /// A generator; a zero seed is replaced (xorshift never leaves zero).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi` (`lo` if `hi < lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// The interleaved actions, with their weights out of 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// A new random balloon target over QMP.
    Target,
    /// Let the balloon move for a moment.
    Pause,
    /// rmmod and modprobe with the balloon inflated.
    Reload,
    /// The device removed with the balloon inflated (PCI: QMP `device_del`, then `device_add`;
    /// MMIO, which QEMU cannot hot-plug: driver unbind + bind).
    Remove,
    /// A process allocating more than is free, the balloon deflating on OOM.
    OomHog,
    /// fail_page_alloc failing the balloon driver's page allocations while it inflates.
    FailAlloc,
}

impl Action {
    const WEIGHTS: [(Action, u64); 6] = [
        (Action::Target, 50),
        (Action::Pause, 10),
        (Action::Reload, 10),
        (Action::Remove, 10),
        (Action::OomHog, 10),
        (Action::FailAlloc, 10),
    ];

    /// Pick one by weight; `FailAlloc` only if the kernel has fail_page_alloc.
    pub fn pick(rng: &mut Rng, fail_alloc: bool) -> Action {
        let usable = |a: Action| a != Action::FailAlloc || fail_alloc;
        let total: u64 = Self::WEIGHTS
            .iter()
            .filter(|(a, _)| usable(*a))
            .map(|w| w.1)
            .sum();
        let mut r = rng.range(0, total - 1);
        for (a, w) in Self::WEIGHTS {
            if !usable(a) {
                continue;
            }
            if r < w {
                return a;
            }
            r -= w;
        }
        Action::Target
    }

    /// Every action that can run, once each, in an order drawn from `rng`: how a run starts, so
    /// that even a short run on the slow debug guest (about a dozen actions) does each kind at
    /// least once before the weights take over.
    pub fn deck(rng: &mut Rng, fail_alloc: bool) -> Vec<Action> {
        let mut deck: Vec<Action> = Self::WEIGHTS
            .iter()
            .map(|(a, _)| *a)
            .filter(|a| *a != Action::FailAlloc || fail_alloc)
            .collect();
        // Fisher-Yates.
        for i in (1..deck.len()).rev() {
            let j = rng.range(0, i as u64) as usize;
            deck.swap(i, j);
        }
        deck
    }

    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Action::Target => "random target",
            Action::Pause => "pause",
            Action::Reload => "unload+reload inflated",
            Action::Remove => "device remove+re-add inflated",
            Action::OomHog => "OOM hog (deflate-on-oom)",
            Action::FailAlloc => "fail_page_alloc window",
        }
    }
}

/// What a run did and found.
#[derive(Default, Debug)]
pub struct Report {
    /// Actions carried out, by kind.
    pub counts: BTreeMap<Action, u64>,
    /// Further figures: fail_page_alloc hits, OOM-deflated pages, compactions, ...
    pub figures: BTreeMap<&'static str, u64>,
    /// Checks that failed.
    pub problems: Vec<String>,
}

impl Report {
    fn add(&mut self, what: &'static str, n: u64) {
        *self.figures.entry(what).or_default() += n;
    }

    /// The counts and figures as a table, and the verdict.
    pub fn render(&self, o: &Opts) -> String {
        let mut s = format!(
            "stress: {} driver, {} s, seed {}, {} MiB, {:?}\n",
            o.driver, o.seconds, o.seed, o.mem_mib, o.transport
        );
        for (a, n) in &self.counts {
            let _ = writeln!(s, "  {:<34} {n:>6}", a.name());
        }
        for (f, n) in &self.figures {
            let _ = writeln!(s, "  {f:<34} {n:>6}");
        }
        if self.problems.is_empty() {
            s.push_str("stress: PASSED");
        } else {
            s.push_str("stress: FAILED");
            for p in &self.problems {
                let _ = write!(s, "\n  - {p}");
            }
        }
        s
    }
}

/// Slower kernels (KASAN, lockdep, kmemleak, page poisoning under TCG) get longer bounds.
fn slowdown(cfg: &VmConfig) -> u32 {
    if cfg.paths.flavour.contains("debug") {
        4
    } else {
        1
    }
}

/// The whole run: boot, random phase, final checks, shutdown. Errors are for a broken VM or
/// channel; failed checks land in `Report::problems`.
pub fn run(o: &Opts) -> Result<Report> {
    let mut cfg = VmConfig::new(&format!("stress-{}", o.driver.module()))
        .transport(o.transport)
        .mem_mib(o.mem_mib);
    cfg.hotplug = true;
    let slow = slowdown(&cfg);
    cfg.boot_timeout = cfg.boot_timeout.max(Duration::from_secs(60)) * slow;
    cfg.cmd_timeout *= slow;
    o.driver.require_built(&cfg.paths)?;
    let mut vm = Vm::boot(cfg)?;
    eprintln!(
        "stress: booted in {:.1} s ({}), seed {}",
        vm.boot_time().as_secs_f64(),
        vm.rundir().display(),
        o.seed
    );
    let mut s = Stress::new(&mut vm, o, slow)?;
    let r = s.random_phase().and_then(|()| s.finish());
    let mut report = std::mem::take(&mut s.report);
    if let Err(e) = r {
        report.problems.push(e.to_string());
        // The splat, if there is one, is what caused the error; report it too.
        if let Err(sp) = vm.check_splats() {
            report.problems.push(sp.to_string());
        }
        return Ok(report);
    }
    if let Err(e) = vm.shutdown() {
        report.problems.push(e.to_string());
    }
    Ok(report)
}

/// State of one run.
struct Stress<'a> {
    vm: &'a mut Vm,
    o: Opts,
    rng: Rng,
    slow: u32,
    mem: u64,
    /// Lowest target the host sets, MiB: low enough to take most of the free memory.
    lo_mib: u64,
    /// The guest's figures right after boot.
    memtotal_kb: u64,
    held_at_boot: i64,
    fail: Option<FailPageAlloc>,
    report: Report,
}

impl<'a> Stress<'a> {
    fn new(vm: &'a mut Vm, o: &Opts, slow: u32) -> Result<Self> {
        let mem = vm.config().mem_bytes();
        let m = vm.meminfo()?;
        let v = vm.vmstat()?;
        let memtotal_kb = m.get("MemTotal").copied().unwrap_or(0);
        let held_at_boot = held(&v);
        vm.load_driver(o.driver)?;
        let fail = guest::fail_page_alloc_present(vm)?.then(FailPageAlloc::default);
        guest::kmemleak_baseline(vm, Duration::from_secs(300))?;
        guest::start_workload(vm, o.seconds, o.mem_mib / 16, o.seed)?;
        Ok(Stress {
            vm,
            o: o.clone(),
            rng: Rng::new(o.seed),
            slow,
            mem,
            lo_mib: o.mem_mib * 2 / 5,
            memtotal_kb,
            held_at_boot,
            fail,
            report: Report::default(),
        })
    }

    fn t(&self, secs: u64) -> Duration {
        Duration::from_secs(secs) * self.slow
    }

    fn random_phase(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let end = Duration::from_secs(self.o.seconds);
        let mut deck = Action::deck(&mut self.rng, self.fail.is_some());
        deck.reverse();
        while t0.elapsed() < end {
            let a = match deck.pop() {
                Some(a) => a,
                None => Action::pick(&mut self.rng, self.fail.is_some()),
            };
            eprintln!(
                "stress: {:>5.0} s  {}",
                t0.elapsed().as_secs_f64(),
                a.name()
            );
            match a {
                Action::Target => self.random_target()?,
                Action::Pause => sleep(Duration::from_millis(self.rng.range(200, 3000))),
                Action::Reload => self.reload()?,
                Action::Remove => self.remove()?,
                Action::OomHog => self.oom_hog()?,
                Action::FailAlloc => self.fail_alloc()?,
            }
            *self.report.counts.entry(a).or_default() += 1;
            self.vm.check_splats()?;
            if let Some(p) = guest::workload_problem(self.vm)? {
                return Err(Error::other(p));
            }
        }
        // A run that ends before every kind of action ran once has not tested them all, whatever
        // else it found.
        if !deck.is_empty() {
            let left: Vec<&str> = deck.iter().rev().map(|a| a.name()).collect();
            self.report.problems.push(format!(
                "the random phase ended after {:.0} s before every action had run once ({} not \
                 run: {}): --seconds / STRESS_SECONDS={} is too short for this guest",
                t0.elapsed().as_secs_f64(),
                left.len(),
                left.join(", "),
                self.o.seconds
            ));
        }
        Ok(())
    }

    fn random_target(&mut self) -> Result<()> {
        let mib = self.rng.range(self.lo_mib, self.o.mem_mib);
        self.vm.qmp().balloon(mib << 20)
    }

    /// Set a target well below the guest size and wait (bounded) until the balloon holds at least
    /// [`MIN_INFLATED_MIB`], as QEMU sees it (`actual`) and then as the guest counts it
    /// (`Balloon:`). Returns the target set, bytes, and the guest's count, MiB: what unloading or
    /// removing the driver must give back. An error for `what` if the balloon stays smaller.
    fn inflate_some(&mut self, what: &str) -> Result<(u64, u64)> {
        let mib = self.rng.range(self.lo_mib, self.o.mem_mib * 3 / 4);
        self.vm.qmp().balloon(mib << 20)?;
        let (t0, bound) = (Instant::now(), self.t(20));
        loop {
            let actual = self.vm.qmp().query_balloon()?;
            let ballooned = (self.mem - actual) >> 20;
            if ballooned >= MIN_INFLATED_MIB {
                break;
            }
            if t0.elapsed() > bound {
                return Err(Error::other(format!(
                    "{what}: the balloon holds {ballooned} MiB {bound:?} after a target of {mib} \
                     MiB, less than the {MIN_INFLATED_MIB} MiB the action needs"
                )));
            }
            sleep(Duration::from_millis(100));
        }
        let held = self.vm.meminfo_kb("Balloon")? >> 10;
        if held < MIN_INFLATED_MIB {
            return Err(Error::other(format!(
                "{what}: QEMU's actual leaves at least {MIN_INFLATED_MIB} MiB ballooned but the \
                 guest's Balloon: is {held} MiB"
            )));
        }
        Ok((mib << 20, held))
    }

    /// Wait (bounded) until the balloon is at rest, at `target` (bytes) or out of puff, then make
    /// what it holds the target: the driver then takes nothing back on its own, so that pages
    /// deflated on OOM stay deflated. The balloon's size, bytes.
    fn pin_balloon(&mut self, target: u64) -> Result<u64> {
        let (t0, bound) = (Instant::now(), self.t(30));
        let mut actual = self.vm.qmp().query_balloon()?;
        let mut since = Instant::now();
        while actual != target && since.elapsed() < Duration::from_secs(1) && t0.elapsed() < bound {
            sleep(Duration::from_millis(100));
            let now = self.vm.qmp().query_balloon()?;
            if now != actual {
                (actual, since) = (now, Instant::now());
            }
        }
        if actual != target {
            self.vm.qmp().balloon(actual)?;
            self.vm
                .wait_balloon_actual(actual, bound)
                .context("pinning the balloon at what it holds")?;
        }
        Ok(self.mem - actual)
    }

    /// The driver gone, the balloon must be empty on both sides.
    fn check_empty(&mut self, what: &str) -> Result<()> {
        let (mem, timeout) = (self.mem, self.t(30));
        self.vm.wait_balloon_actual(mem, timeout).map_err(|e| {
            Error::other(format!(
                "{what}: QEMU's balloon did not return to empty: {e}"
            ))
        })?;
        self.check_guest_empty(what)
    }

    /// The guest's balloon empty (with the device gone, QEMU has no balloon to ask).
    fn check_guest_empty(&mut self, what: &str) -> Result<()> {
        let m = self.vm.meminfo()?;
        let v = self.vm.vmstat()?;
        let b = m.get("Balloon").copied().unwrap_or(u64::MAX);
        let nr = v.get("nr_balloon_pages").copied().unwrap_or(u64::MAX);
        if b != 0 || nr != 0 {
            return Err(Error::other(format!(
                "{what}: Balloon: {b} kB, nr_balloon_pages {nr} with no driver bound"
            )));
        }
        Ok(())
    }

    fn reload(&mut self) -> Result<()> {
        let d = self.o.driver;
        let (_, mib) = self.inflate_some("unload+reload")?;
        self.report.add("MiB inflated at unload", mib);
        self.vm.unload_driver(d)?;
        self.check_empty("after rmmod")?;
        self.vm.load_driver(d)
    }

    fn remove(&mut self) -> Result<()> {
        let d = self.o.driver;
        let (_, mib) = self.inflate_some("device removal")?;
        self.report.add("MiB inflated at remove", mib);
        match self.o.transport {
            Transport::Pci => {
                // The host takes the device away: the guest's hot-plug driver powers the slot
                // off, which removes the balloon driver (deflating it), and QEMU then deletes it.
                let bound = self.t(60);
                self.vm.qmp().device_del("balloon0")?;
                self.vm
                    .qmp()
                    .wait_device_deleted("balloon0", bound)
                    .context("device_del balloon0")?;
                self.check_guest_empty("after device_del")?;
                let (driver, id, props) = self
                    .vm
                    .config()
                    .balloon_device_add()
                    .ok_or_else(|| Error::other("the VM has no balloon to add back"))?;
                self.vm.qmp().device_add(&driver, &id, props)?;
            }
            Transport::Mmio => {
                let dev = guest::unbind(self.vm, d)?;
                self.check_empty("after unbind")?;
                guest::bind(self.vm, d, &dev)?;
            }
        }
        // Bound again means probed: wait for it as load_driver does.
        let t0 = Instant::now();
        while !self.vm.driver_bound(d)? {
            if t0.elapsed() > self.t(30) {
                return Err(Error::other(format!(
                    "{d} driver not bound again after the device came back"
                )));
            }
            sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn oom_hog(&mut self) -> Result<()> {
        let (target, _) = self.inflate_some("OOM hog")?;
        // At rest: a balloon still inflating would take back what it gives on OOM, and refill
        // after a kill, hiding whether it was empty then.
        let ballooned = self.pin_balloon(target)? >> 20;
        self.report.add("MiB ballooned at OOM hog", ballooned);
        let m = self.vm.meminfo()?;
        let avail_mib = m.get("MemAvailable").copied().unwrap_or(0) >> 10;
        // More than is available, less than available plus the balloon minus what the churn may
        // hold: only the balloon deflating on OOM lets it through without an OOM kill.
        let churn = self.o.mem_mib / 16;
        let mib = (avail_mib + ballooned / 2).saturating_sub(churn).max(16);
        let before = self.vm.vmstat()?;
        let timeout = self.t(120);
        let (st, out) = self
            .vm
            .sh_timeout(&format!("rb-memload hog {mib}"), timeout)?;
        let after = self.vm.vmstat()?;
        let deflated =
            counter(&after, "balloon_deflate").saturating_sub(counter(&before, "balloon_deflate"));
        let kills = counter(&after, "oom_kill").saturating_sub(counter(&before, "oom_kill"));
        self.report.add("OOM-hog balloon pages deflated", deflated);
        self.report.add("OOM kills", kills);
        let left = counter(&after, "nr_balloon_pages");
        let end = oom_hog_end(st, kills, left).map_err(|problem| {
            Error::other(format!(
                "OOM hog of {mib} MiB ({avail_mib} MiB available, {ballooned} MiB ballooned, {} \
                 MiB deflated meanwhile): {problem}: {}",
                (deflated * PAGE) >> 20,
                out.trim()
            ))
        })?;
        self.report.add(end, 1);
        Ok(())
    }

    fn fail_alloc(&mut self) -> Result<()> {
        let Some(mut f) = self.fail.take() else {
            return Ok(());
        };
        let r = (|| {
            f.arm(self.vm, self.o.driver, 20)?;
            // Inflate by 64 MiB more than now so the driver allocates while armed.
            let actual = self.vm.qmp().query_balloon()? >> 20;
            let target = actual.saturating_sub(64).max(self.lo_mib);
            if target == actual {
                self.vm.qmp().balloon(self.o.mem_mib << 20)?;
                sleep(self.t(2));
                self.vm.qmp().balloon(self.lo_mib << 20)?;
            } else {
                self.vm.qmp().balloon(target << 20)?;
            }
            let t0 = Instant::now();
            while f.remaining(self.vm)? > 0 && t0.elapsed() < self.t(15) {
                sleep(Duration::from_millis(250));
            }
            f.disarm(self.vm)
        })();
        self.report.add("fail_page_alloc failures injected", f.hits);
        self.report
            .add("fail_page_alloc windows without a hit", f.misses);
        self.fail = Some(f);
        r
    }

    /// Deflate fully and check that everything is back where it was.
    fn finish(&mut self) -> Result<()> {
        if let Some(mut f) = self.fail.take() {
            f.disarm(self.vm)?;
            if f.windows > 0 && f.hits == 0 {
                self.report
                    .problems
                    .push("fail_page_alloc never failed one of the balloon's allocations".into());
            }
        }
        let timeout = self.t(180);
        let w = guest::stop_workload(self.vm, timeout)?;
        self.report.add("churn rounds", w.rounds);
        self.report.add("churn MiB touched", w.mib);
        self.report.add("compact_memory writes", w.compactions);
        if let Some(p) = w.problem {
            self.report.problems.push(p);
        }
        let (mem, timeout) = (self.mem, self.t(300));
        self.vm.qmp().balloon(mem)?;
        if let Err(e) = self.vm.wait_balloon_actual(mem, timeout) {
            self.report.problems.push(format!("final deflate: {e}"));
        }
        let m = self.vm.meminfo()?;
        let v = self.vm.vmstat()?;
        for (k, n) in [
            ("balloon_inflate", "pages inflated (vmstat)"),
            ("balloon_deflate", "pages deflated (vmstat)"),
            ("balloon_migrate", "balloon pages migrated (vmstat)"),
            ("compact_stall", "compaction stalls (vmstat)"),
        ] {
            self.report.add(n, counter(&v, k));
        }
        let balloon = m.get("Balloon").copied().unwrap_or(u64::MAX);
        let total = m.get("MemTotal").copied().unwrap_or(0);
        let nr = counter(&v, "nr_balloon_pages");
        let held_now = held(&v);
        let mut p = Vec::new();
        if balloon != 0 {
            p.push(format!("Balloon: {balloon} kB after the final deflate"));
        }
        if nr != 0 {
            p.push(format!("nr_balloon_pages {nr} after the final deflate"));
        }
        if total != self.memtotal_kb {
            p.push(format!(
                "MemTotal {total} kB at the end, {} kB at boot",
                self.memtotal_kb
            ));
        }
        if held_now != self.held_at_boot {
            p.push(format!(
                "balloon_inflate - balloon_deflate is {held_now} at the end, {} at boot",
                self.held_at_boot
            ));
        }
        let t0 = Instant::now();
        let timeout = self.t(10);
        match self.vm.sh_timeout("echo alive", timeout) {
            Ok((0, out)) if out.trim() == "alive" => self
                .report
                .add("final echo, ms", t0.elapsed().as_millis() as u64),
            Ok((st, out)) => p.push(format!("guest not responsive: exit {st}, {out:?}")),
            Err(e) => p.push(format!("guest not responsive: {e}")),
        }
        self.report.problems.append(&mut p);
        self.vm.unload_driver(self.o.driver)?;
        let timeout = self.t(300);
        if let Some(leaks) = guest::kmemleak_scan(self.vm, timeout)? {
            self.report.add("kmemleak new suspects", leaks.total);
            if !leaks.ours.is_empty() {
                self.report
                    .problems
                    .push(format!("kmemleak: leaks from the balloon:\n{}", leaks.ours));
            }
        }
        Ok(())
    }
}

/// How an OOM hog ended (the name of its count in the report), from its exit status `st`, the
/// OOM kills while it ran, and the balloon pages `left` afterwards; or what went wrong.
///
/// The OOM killer runs only when no OOM notifier freed anything (`out_of_memory()`): with
/// deflate-on-OOM, once the balloon has nothing left to give. The balloon is pinned during the
/// hog (`Stress::pin_balloon`) and does not refill on its own: what it holds afterwards, it held
/// at any kill.
fn oom_hog_end(st: i32, kills: u64, left: u64) -> std::result::Result<&'static str, String> {
    match (st, kills) {
        (0, 0) => return Ok("OOM hogs completed"),
        (0 | 137, 1..) => {}
        (137, 0) => return Err("killed (137), but not by the OOM killer".into()),
        _ => return Err(format!("exited {st}")),
    }
    if left > OOM_KILL_LEFT_PAGES {
        return Err(format!(
            "the OOM killer ran {kills} time(s) (the hog exited {st}) while the balloon still held \
             {} MiB: deflating on OOM must give the balloon's pages first",
            (left * PAGE) >> 20
        ));
    }
    Ok(if st == 0 {
        "OOM hogs completed"
    } else {
        "OOM hogs killed, balloon empty"
    })
}

/// A /proc/vmstat counter, 0 if absent.
fn counter(v: &BTreeMap<String, u64>, k: &str) -> u64 {
    v.get(k).copied().unwrap_or(0)
}

/// Balloon pages inflated and not deflated since boot.
fn held(v: &BTreeMap<String, u64>) -> i64 {
    counter(v, "balloon_inflate") as i64 - counter(v, "balloon_deflate") as i64
}

#[cfg(test)]
mod tests {
    use super::{oom_hog_end, Action, Rng, OOM_KILL_LEFT_PAGES};

    #[test]
    fn an_oom_kill_is_a_failure_unless_the_balloon_was_empty() {
        assert_eq!(oom_hog_end(0, 0, 100_000), Ok("OOM hogs completed"));
        // Killed with the balloon empty, or all but the pages compaction had isolated: the
        // balloon gave what it had.
        assert_eq!(oom_hog_end(137, 1, 0), Ok("OOM hogs killed, balloon empty"));
        assert_eq!(
            oom_hog_end(137, 2, OOM_KILL_LEFT_PAGES),
            Ok("OOM hogs killed, balloon empty")
        );
        assert_eq!(oom_hog_end(0, 1, 0), Ok("OOM hogs completed"));
        // The OOM killer ran while the balloon held pages: the hog or another process was killed
        // for memory the balloon should have given.
        let held = 150 << 8;
        assert!(oom_hog_end(137, 1, held)
            .unwrap_err()
            .contains("still held 150 MiB"));
        assert!(oom_hog_end(0, 1, held).unwrap_err().contains("still held"));
        // Killed by something else, or failed.
        assert!(oom_hog_end(137, 0, 0)
            .unwrap_err()
            .contains("not by the OOM killer"));
        assert_eq!(oom_hog_end(1, 0, 0), Err("exited 1".to_string()));
    }

    #[test]
    fn rng_is_reproducible_and_in_range() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..1000 {
            let x = a.range(10, 20);
            assert_eq!(x, b.range(10, 20));
            assert!((10..=20).contains(&x));
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
        assert_eq!(Rng::new(0).range(5, 5), 5);
    }

    #[test]
    fn every_action_is_picked_and_fail_alloc_only_when_present() {
        let mut rng = Rng::new(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let a = Action::pick(&mut rng, false);
            assert_ne!(a, Action::FailAlloc);
            seen.insert(a);
        }
        assert_eq!(seen.len(), 5);
        assert!((0..2000).any(|_| Action::pick(&mut rng, true) == Action::FailAlloc));
    }

    #[test]
    fn a_run_starts_with_every_action_once() {
        for seed in 0..50 {
            let mut rng = Rng::new(seed);
            let mut with_fail = Action::deck(&mut rng, true);
            assert_eq!(with_fail.len(), 6);
            with_fail.sort();
            with_fail.dedup();
            assert_eq!(with_fail.len(), 6, "seed {seed}");
            let without = Action::deck(&mut rng, false);
            assert_eq!(without.len(), 5);
            assert!(!without.contains(&Action::FailAlloc));
        }
        // The order depends on the seed.
        let decks: std::collections::BTreeSet<_> = (0..20)
            .map(|seed| Action::deck(&mut Rng::new(seed), true))
            .collect();
        assert!(decks.len() > 1);
    }
}
