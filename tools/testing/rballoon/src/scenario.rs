// SPDX-License-Identifier: GPL-2.0
//! Balloon scenarios shared by the `demo` command and the integration tests, written once so a test
//! runs the same steps for either driver.

use crate::config::VmConfig;
use crate::driver::Driver;
use crate::error::{Context, Error, Result};
use crate::parity::vmstat_field;
use crate::vm::Vm;
use std::fmt::Write as _;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Guest page size: the unit the balloon moves.
pub const PAGE: u64 = 4096;

/// The outcome of one balloon step.
#[derive(Clone, Debug)]
pub struct Step {
    /// What the step did (`boot`, `inflate`, `deflate`, ...).
    pub name: String,
    /// The guest memory size asked for, bytes.
    pub target: u64,
    /// `query-balloon` actual afterwards, bytes.
    pub actual: u64,
    /// /proc/meminfo MemTotal afterwards, kB.
    pub memtotal_kb: u64,
    /// /proc/meminfo Balloon afterwards, kB.
    pub balloon_kb: u64,
    /// How long the balloon took to reach the target.
    pub secs: f64,
    /// Why the step failed, if it did.
    pub problem: Option<String>,
}

impl Step {
    /// An error if the step failed.
    pub fn check(&self) -> Result<()> {
        match &self.problem {
            None => Ok(()),
            Some(p) => Err(Error::other(format!("balloon step {}: {p}", self.name))),
        }
    }
}

/// Does the guest's `Balloon:` (kB) account for exactly the memory QEMU says is ballooned, within a
/// page?
pub fn balloon_agrees(mem_bytes: u64, actual: u64, balloon_kb: u64) -> bool {
    let host_view = mem_bytes.saturating_sub(actual);
    (balloon_kb * 1024).abs_diff(host_view) <= PAGE
}

/// Read MemTotal and Balloon, re-reading for up to a second if Balloon does not agree with `actual`
/// yet (the driver updates its counters and the config space in separate steps).
fn settled_meminfo(vm: &mut Vm, actual: u64) -> Result<(u64, u64)> {
    let mem = vm.config().mem_bytes();
    let t0 = Instant::now();
    loop {
        let m = vm.meminfo()?;
        let total = m.get("MemTotal").copied().unwrap_or(0);
        let balloon = *m.get("Balloon").ok_or_else(|| {
            Error::other(
                "/proc/meminfo has no Balloon: line (kernel without CONFIG_MEMORY_BALLOON?)",
            )
        })?;
        if balloon_agrees(mem, actual, balloon) || t0.elapsed() > Duration::from_secs(1) {
            return Ok((total, balloon));
        }
        sleep(Duration::from_millis(100));
    }
}

/// Record the current state as a step without changing the balloon (`seconds` is supplied).
pub fn observe(vm: &mut Vm, name: &str, secs: f64) -> Result<Step> {
    let actual = vm.qmp().query_balloon()?;
    let (memtotal_kb, balloon_kb) = settled_meminfo(vm, actual)?;
    let mem = vm.config().mem_bytes();
    let problem = (!balloon_agrees(mem, actual, balloon_kb)).then(|| {
        format!(
            "Balloon: {balloon_kb} kB but QEMU says {} kB are ballooned",
            mem.saturating_sub(actual) / 1024
        )
    });
    Ok(Step {
        name: name.into(),
        target: actual,
        actual,
        memtotal_kb,
        balloon_kb,
        secs,
        problem,
    })
}

/// Ask QMP for a guest size of `target_mib`, wait up to `timeout` for `actual` to get there, then
/// compare the guest's `Balloon:` with it. A balloon that does not reach the target is a failed
/// step, not an error, so a table can still be printed; errors are for a broken VM or channel.
pub fn balloon_step(vm: &mut Vm, name: &str, target_mib: u64, timeout: Duration) -> Result<Step> {
    let target = target_mib << 20;
    let mem = vm.config().mem_bytes();
    let t0 = Instant::now();
    vm.qmp().balloon(target)?;
    let reached = vm.wait_balloon_actual(target, timeout);
    let secs = t0.elapsed().as_secs_f64();
    let actual = vm.qmp().query_balloon()?;
    let (memtotal_kb, balloon_kb) = settled_meminfo(vm, actual)?;
    let problem = match reached {
        Err(e) => Some(e.to_string()),
        Ok(_) if !balloon_agrees(mem, actual, balloon_kb) => Some(format!(
            "guest Balloon: is {balloon_kb} kB but QEMU's actual leaves {} kB ballooned",
            mem.saturating_sub(actual) / 1024
        )),
        Ok(_) => None,
    };
    Ok(Step {
        name: name.into(),
        target,
        actual,
        memtotal_kb,
        balloon_kb,
        secs,
        problem,
    })
}

/// The guest's balloon accounting before a scenario, to check that the balloon, once empty again,
/// leaves the guest as it found it: as many pages deflated as inflated meanwhile, `MemTotal` as
/// it was.
#[derive(Clone, Copy, Debug)]
pub struct Ledger {
    /// /proc/meminfo `MemTotal`, kB.
    pub memtotal_kb: u64,
    /// /proc/vmstat `balloon_inflate`.
    pub inflated: u64,
    /// /proc/vmstat `balloon_deflate`.
    pub deflated: u64,
}

impl Ledger {
    /// Read it now.
    pub fn read(vm: &mut Vm) -> Result<Ledger> {
        let memtotal_kb = vm.meminfo_kb("MemTotal")?;
        let v = vm.vmstat()?;
        Ok(Ledger {
            memtotal_kb,
            inflated: vmstat_field(&v, "balloon_inflate")?,
            deflated: vmstat_field(&v, "balloon_deflate")?,
        })
    }

    /// Pages inflated and deflated since `self`, as of `now`.
    pub fn since(&self, now: &Ledger) -> (u64, u64) {
        (now.inflated - self.inflated, now.deflated - self.deflated)
    }

    /// How the guest differs from `self` now that `empty`, the step that emptied the balloon,
    /// is done; nothing if it is as it was.
    pub fn differences(&self, vm: &mut Vm, empty: &Step) -> Result<Vec<String>> {
        let now = Ledger::read(vm)?;
        let (inflated, deflated) = self.since(&now);
        let mut problems = Vec::new();
        if inflated != deflated {
            problems.push(format!("{inflated} pages inflated but {deflated} deflated"));
        }
        if empty.balloon_kb != 0 {
            problems.push(format!("Balloon: {} kB once empty", empty.balloon_kb));
        }
        if now.memtotal_kb != self.memtotal_kb {
            problems.push(format!(
                "MemTotal {} kB at first, {} kB once empty",
                self.memtotal_kb, now.memtotal_kb
            ));
        }
        Ok(problems)
    }
}

/// Walk the balloon through `targets_mib` in order; every step must reach its target and agree
/// with the guest. Returns the steps (for printing) or the first failure.
pub fn walk(vm: &mut Vm, targets_mib: &[u64], timeout: Duration) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    let mut size = vm.qmp().query_balloon()? >> 20;
    for &t in targets_mib {
        let name = if t < size {
            "inflate"
        } else if t > size {
            "deflate"
        } else {
            "hold"
        };
        let s = balloon_step(vm, name, t, timeout)?;
        eprintln!("{}", row(&s));
        s.check()?;
        steps.push(s);
        size = t;
    }
    Ok(steps)
}

/// Parse HMP `info balloon` (`balloon: actual=<MiB>`).
pub fn parse_info_balloon(out: &str) -> Result<u64> {
    out.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("balloon: actual=")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .ok_or_else(|| Error::other(format!("unexpected `info balloon` output {out:?}")))
}

/// Boot `cfg`, load `driver`, walk the balloon through `targets_mib`, and check that HMP (on its
/// own socket and through QMP) reports the final size; then shut down cleanly. The body of the
/// per-driver, per-transport balloon tests.
pub fn balloon_cycle(cfg: VmConfig, driver: Driver, targets_mib: &[u64]) -> Result<Vec<Step>> {
    driver.require_built(&cfg.paths)?;
    let name = format!("{} ({driver} driver, {:?})", cfg.name, cfg.transport);
    let mut vm = Vm::boot(cfg)?;
    eprintln!("{name}: booted in {:.2} s", vm.boot_time().as_secs_f64());
    vm.load_driver(driver)?;
    eprintln!("{}", header());
    let steps = walk(&mut vm, targets_mib, Duration::from_secs(60)).context(&name)?;
    let last = *targets_mib.last().unwrap_or(&vm.config().mem_mib);
    let hmp = parse_info_balloon(&vm.hmp("info balloon")?)?;
    let via_qmp = parse_info_balloon(&vm.qmp().human_monitor_command("info balloon")?)?;
    if hmp != last || via_qmp != last {
        return Err(Error::other(format!(
            "{name}: `info balloon` says {hmp} MiB (HMP socket) / {via_qmp} MiB (QMP), expected {last}"
        )));
    }
    vm.shutdown().context(&name)?;
    Ok(steps)
}

/// With the balloon inflated to `target_mib`, unloading `driver` must hand every page back (QEMU's
/// actual back to the full size, guest `Balloon:` 0) and loading it again must re-inflate to the
/// target that is still set.
pub fn unload_reload(vm: &mut Vm, driver: Driver, target_mib: u64) -> Result<()> {
    let mem = vm.config().mem_bytes();
    let timeout = Duration::from_secs(60);
    balloon_step(vm, "inflate", target_mib, timeout)?.check()?;
    vm.unload_driver(driver)?;
    vm.wait_balloon_actual(mem, timeout).context(format!(
        "{driver} driver unloaded with the balloon inflated"
    ))?;
    let after = observe(vm, "unloaded", 0.0)?;
    eprintln!("{}", row(&after));
    after.check()?;
    if after.balloon_kb != 0 {
        return Err(Error::other(format!(
            "Balloon: {} kB after unloading the {driver} driver",
            after.balloon_kb
        )));
    }
    vm.load_driver(driver)?;
    vm.wait_balloon_actual(target_mib << 20, timeout)
        .context(format!(
            "{driver} driver reloaded with a target of {target_mib} MiB"
        ))?;
    let again = observe(vm, "reloaded", 0.0)?;
    eprintln!("{}", row(&again));
    again.check()
}

/// Turn on QEMU's guest statistics polling (1 s) and check that the driver answers on the stats
/// queue with a `stat-total-memory` equal to the guest's MemTotal.
pub fn check_guest_stats(vm: &mut Vm) -> Result<()> {
    let dev = "/machine/peripheral/balloon0";
    vm.qmp()
        .qom_set(dev, "guest-stats-polling-interval", serde_json::json!(1))?;
    let interval = vm.qmp().qom_get(dev, "guest-stats-polling-interval")?;
    if interval != 1 {
        return Err(Error::other(format!(
            "guest-stats-polling-interval reads back as {interval}"
        )));
    }
    let t0 = Instant::now();
    let stats = loop {
        let s = vm.qmp().qom_get(dev, "guest-stats")?;
        if s["last-update"].as_u64().unwrap_or(0) != 0 {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(Error::other(format!("no guest stats after 30 s: {s}")));
        }
        sleep(Duration::from_millis(200));
    };
    let total = stats["stats"]["stat-total-memory"].as_u64().unwrap_or(0);
    let memtotal = vm.meminfo_kb("MemTotal")? * 1024;
    if total != memtotal {
        return Err(Error::other(format!(
            "stat-total-memory {total} != MemTotal {memtotal} bytes: {stats}"
        )));
    }
    Ok(())
}

/// The table header.
pub fn header() -> String {
    format!(
        "{:<10} | {:>10} | {:>10} | {:>12} | {:>12} | {:>8}",
        "step", "target MiB", "actual MiB", "MemTotal MiB", "Balloon: MiB", "seconds"
    )
}

/// One table row.
pub fn row(s: &Step) -> String {
    let mib = |b: u64| format!("{:.1}", b as f64 / (1u64 << 20) as f64);
    let mut r = format!(
        "{:<10} | {:>10} | {:>10} | {:>12} | {:>12} | {:>8.2}",
        s.name,
        mib(s.target),
        mib(s.actual),
        mib(s.memtotal_kb * 1024),
        mib(s.balloon_kb * 1024),
        s.secs
    );
    if let Some(p) = &s.problem {
        let _ = write!(r, "  FAILED: {p}");
    }
    r
}

/// The whole table.
pub fn table(steps: &[Step]) -> String {
    let mut t = header();
    t.push('\n');
    t.push_str(&"-".repeat(header().len()));
    for s in steps {
        t.push('\n');
        t.push_str(&row(s));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::balloon_agrees;

    #[test]
    fn info_balloon_parses() {
        assert_eq!(
            super::parse_info_balloon("balloon: actual=700\n").unwrap(),
            700
        );
        assert!(
            super::parse_info_balloon("Error: No balloon device has been activated\n").is_err()
        );
    }

    #[test]
    fn agreement_is_within_one_page() {
        let mem = 2048 << 20;
        assert!(balloon_agrees(mem, mem, 0));
        assert!(balloon_agrees(mem, 1024 << 20, 1024 * 1024));
        assert!(balloon_agrees(mem, 1024 << 20, 1024 * 1024 - 4));
        assert!(!balloon_agrees(mem, 1024 << 20, 1024 * 1024 - 8));
        assert!(!balloon_agrees(mem, 1024 << 20, 0));
    }
}
