// SPDX-License-Identifier: GPL-2.0
//! The Rust driver (module `rballoon`) against the C driver (module `virtio_balloon`): each test
//! runs the same steps on a fresh guest for each driver, checks every figure against the kernel's
//! own accounting, and then requires the two drivers to agree on every figure they both produce.
//! Not part of the default run yet: `cargo test --features rust-driver -- --test-threads=1`. Each
//! test fails at once, saying why, if the Rust module was not built.
#![cfg(feature = "rust-driver")]

use rballoon_harness::scenario::{parse_info_balloon, PAGE};
use rballoon_harness::{Driver, Error, Paths, Result, Transport, Vm, VmConfig};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Every guest in this file: small enough for TCG, large enough to balloon hundreds of MiB.
const MEM_MIB: u64 = 1024;

/// Bound on one balloon move (a few hundred MiB take about a second under TCG).
const MOVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Fail before booting anything if the Rust module was not built.
fn require_rust() -> Result<()> {
    Driver::Rust.require_built(&VmConfig::new("check").paths)
}

/// A 1024 MiB guest on `transport` whose balloon offers DEFLATE_ON_OOM or not.
fn config(name: &str, transport: Transport, deflate_on_oom: bool) -> VmConfig {
    let mut cfg = VmConfig::new(name).transport(transport).mem_mib(MEM_MIB);
    if let Some(b) = cfg.balloon.as_mut() {
        b.deflate_on_oom = deflate_on_oom;
    }
    cfg
}

fn onoff(v: bool) -> &'static str {
    if v {
        "on"
    } else {
        "off"
    }
}

/// What the guest and QEMU say about the balloon at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Figures {
    /// `query-balloon` actual, bytes.
    actual: u64,
    /// /proc/meminfo `Balloon:`, kB.
    balloon_kb: u64,
    /// /proc/meminfo `MemTotal:`, kB.
    memtotal_kb: u64,
    /// /proc/vmstat `nr_balloon_pages`.
    nr_balloon_pages: u64,
    /// /proc/vmstat `balloon_inflate` (since boot: KUnit suites at boot count too).
    inflated: u64,
    /// /proc/vmstat `balloon_deflate`.
    deflated: u64,
}

impl Figures {
    /// Bytes QEMU considers ballooned.
    fn host_ballooned(&self, mem: u64) -> u64 {
        mem.saturating_sub(self.actual)
    }

    /// Pages inflated and not deflated since boot.
    fn held(&self) -> i64 {
        self.inflated as i64 - self.deflated as i64
    }

    /// The event counters as deltas from `base`, the other figures as they are.
    fn since(&self, base: &Figures) -> Figures {
        Figures {
            inflated: self.inflated - base.inflated,
            deflated: self.deflated - base.deflated,
            ..*self
        }
    }
}

/// Read the figures once (the per-CPU counters folded first, see [`Vm::vmstat`]).
fn read_figures(vm: &mut Vm) -> Result<(Figures, BTreeMap<String, u64>)> {
    let actual = vm.qmp().query_balloon()?;
    let m = vm.meminfo()?;
    let v = vm.vmstat()?;
    let get = |t: &BTreeMap<String, u64>, k: &str| {
        t.get(k)
            .copied()
            .ok_or_else(|| Error::other(format!("the guest does not report {k}")))
    };
    let f = Figures {
        actual,
        balloon_kb: get(&m, "Balloon")?,
        memtotal_kb: get(&m, "MemTotal")?,
        nr_balloon_pages: get(&v, "nr_balloon_pages")?,
        inflated: get(&v, "balloon_inflate")?,
        deflated: get(&v, "balloon_deflate")?,
    };
    Ok((f, m))
}

/// Read the figures once the balloon is at rest: re-read for up to 2 s until QEMU's actual and the
/// guest's `Balloon:` agree (the driver moves pages before it writes `actual`).
fn settled(vm: &mut Vm) -> Result<(Figures, BTreeMap<String, u64>)> {
    let mem = vm.config().mem_bytes();
    let t0 = Instant::now();
    loop {
        let r = read_figures(vm)?;
        if r.0.balloon_kb * 1024 == r.0.host_ballooned(mem) || t0.elapsed() > Duration::from_secs(2)
        {
            return Ok(r);
        }
        sleep(Duration::from_millis(100));
    }
}

/// The kernel's own accounting must match the balloon: QEMU's actual leaves exactly `Balloon:`
/// ballooned, every page in it was inflated and not deflated since `base`, and MemTotal is
/// `base`'s less the balloon exactly when the device does not offer DEFLATE_ON_OOM (the driver
/// then takes the pages out of the managed count, as C).
///
/// `Balloon:` is not compared with `nr_balloon_pages`: meminfo prints that very node counter, so
/// the two cannot differ. What checks the guest's count is the host's: `actual`, which the driver
/// writes from its own page count, and `info balloon` at the end of each walk.
fn check_accounting(
    what: &str,
    mem: u64,
    base: &Figures,
    f: &Figures,
    deflate_on_oom: bool,
    problems: &mut Vec<String>,
) {
    let mut bad = |m: String| problems.push(format!("{what}: {m}"));
    if f.balloon_kb * 1024 != f.host_ballooned(mem) {
        bad(format!(
            "Balloon: {} kB but QEMU's actual {} MiB leaves {} kB ballooned",
            f.balloon_kb,
            f.actual >> 20,
            f.host_ballooned(mem) / 1024
        ));
    }
    let held = f.held() - base.held();
    if held != f.nr_balloon_pages as i64 - base.nr_balloon_pages as i64 {
        bad(format!(
            "balloon_inflate - balloon_deflate grew by {held} pages but nr_balloon_pages by {}",
            f.nr_balloon_pages as i64 - base.nr_balloon_pages as i64
        ));
    }
    let want_total = if deflate_on_oom {
        base.memtotal_kb
    } else {
        base.memtotal_kb.saturating_sub(f.balloon_kb)
    };
    if f.memtotal_kb != want_total {
        bad(format!(
            "MemTotal {} kB, expected {want_total} kB (boot {} kB, Balloon: {} kB, deflate-on-oom={})",
            f.memtotal_kb,
            base.memtotal_kb,
            f.balloon_kb,
            onoff(deflate_on_oom)
        ));
    }
}

/// A table of one driver's steps; the event counters count from the first row.
fn table(title: &str, rows: &[(String, Figures)]) -> String {
    let mut t = format!(
        "{title}\n{:<14} | {:>10} | {:>10} | {:>12} | {:>10} | {:>10} | {:>10}\n",
        "step", "actual MiB", "Balloon kB", "MemTotal kB", "nr_bal_pg", "inflated", "deflated"
    );
    for (name, f) in rows {
        let f = f.since(&rows[0].1);
        let _ = writeln!(
            t,
            "{name:<14} | {:>10} | {:>10} | {:>12} | {:>10} | {:>10} | {:>10}",
            f.actual >> 20,
            f.balloon_kb,
            f.memtotal_kb,
            f.nr_balloon_pages,
            f.inflated,
            f.deflated
        );
    }
    t
}

/// Fail with every problem found, or pass.
fn verdict(what: &str, problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::other(format!(
            "{what}: {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        )))
    }
}

/// Require the two drivers' figures to be identical step by step. The vmstat event counters are
/// compared as deltas from each guest's own boot.
fn compare(
    what: &str,
    c: &[(String, Figures)],
    rust: &[(String, Figures)],
    problems: &mut Vec<String>,
) {
    if c.len() != rust.len() {
        problems.push(format!(
            "{what}: C made {} steps, Rust {}",
            c.len(),
            rust.len()
        ));
    }
    let (cb, rb) = (c[0].1, rust[0].1);
    for ((name, cf), (_, rf)) in c.iter().zip(rust) {
        let norm = |f: &Figures, b: &Figures| f.since(b);
        if norm(cf, &cb) != norm(rf, &rb) {
            problems.push(format!(
                "{what}, step {name}: the drivers disagree: C {:?}, Rust {:?}",
                norm(cf, &cb),
                norm(rf, &rb)
            ));
        }
    }
}

/// Boot a guest for `driver`, then walk the balloon through `targets_mib`, checking the accounting
/// at every step; finally `info balloon` must name the last target. Returns the steps (the first
/// is the boot state, before the driver is loaded) and the negotiated feature bits.
fn walk(
    transport: Transport,
    deflate_on_oom: bool,
    driver: Driver,
    targets_mib: &[u64],
    problems: &mut Vec<String>,
) -> Result<(Vec<(String, Figures)>, String)> {
    let name = format!("walk-{}-{driver}", onoff(deflate_on_oom));
    let what = format!(
        "{driver} driver, {transport:?}, deflate-on-oom={}",
        onoff(deflate_on_oom)
    );
    // The debug guest keeps more for itself: it gets more memory, and the targets move up by as
    // much, so that the balloon takes the same sizes on either guest.
    let mem_mib = Paths::from_env().guest_mib(MEM_MIB);
    let shift = mem_mib - MEM_MIB;
    let mut vm = Vm::boot(config(&name, transport, deflate_on_oom).mem_mib(mem_mib))?;
    let mem = vm.config().mem_bytes();
    let (base, _) = settled(&mut vm)?;
    let mut rows = vec![("boot".to_string(), base)];
    vm.load_driver(driver)?;
    let (loaded, _) = settled(&mut vm)?;
    check_accounting(
        &format!("{what}, loaded"),
        mem,
        &base,
        &loaded,
        deflate_on_oom,
        problems,
    );
    rows.push(("loaded".into(), loaded));
    // The features the driver negotiated (one character per bit): DEFLATE_ON_OOM (bit 2) must be
    // as configured, or the MemTotal expectations below test the wrong thing.
    let features = vm
        .sh(&format!(
            "cat /sys/bus/virtio/drivers/{}/virtio*/features",
            driver.sysfs_name()
        ))?
        .trim()
        .to_string();
    if features.as_bytes().get(2) != Some(if deflate_on_oom { &b'1' } else { &b'0' }) {
        problems.push(format!(
            "{what}: negotiated features {features}: DEFLATE_ON_OOM (bit 2) is not {}",
            onoff(deflate_on_oom)
        ));
    }
    for t in targets_mib.iter().map(|t| t + shift) {
        let t0 = Instant::now();
        vm.qmp().balloon(t << 20)?;
        vm.wait_balloon_actual(t << 20, MOVE_TIMEOUT)
            .map_err(|e| e.context(format!("{what}: target {t} MiB")))?;
        let secs = t0.elapsed().as_secs_f64();
        let (f, _) = settled(&mut vm)?;
        let step = format!("{t} MiB");
        check_accounting(
            &format!("{what}, {step} ({secs:.2} s)"),
            mem,
            &base,
            &f,
            deflate_on_oom,
            problems,
        );
        rows.push((step, f));
    }
    let last = targets_mib.last().unwrap_or(&MEM_MIB) + shift;
    let info = parse_info_balloon(&vm.hmp("info balloon")?)?;
    if info != last {
        problems.push(format!(
            "{what}: `info balloon` says {info} MiB, expected {last}"
        ));
    }
    vm.shutdown().map_err(|e| e.context(&what))?;
    eprintln!("{}\nnegotiated features {features}\n", table(&what, &rows));
    Ok((rows, features))
}

/// Both drivers, both settings of deflate-on-oom, on `transport`.
fn both_drivers_walk(transport: Transport, targets_mib: &[u64]) -> Result<()> {
    require_rust()?;
    let mut problems = Vec::new();
    for deflate_on_oom in [true, false] {
        let c = walk(
            transport,
            deflate_on_oom,
            Driver::C,
            targets_mib,
            &mut problems,
        )?;
        let rust = walk(
            transport,
            deflate_on_oom,
            Driver::Rust,
            targets_mib,
            &mut problems,
        )?;
        let what = format!("{transport:?}, deflate-on-oom={}", onoff(deflate_on_oom));
        if c.1 != rust.1 {
            problems.push(format!(
                "{what}: the drivers negotiated different features: C {}, Rust {}",
                c.1, rust.1
            ));
        }
        compare(&what, &c.0, &rust.0, &mut problems);
    }
    verdict(&format!("balloon walk over {transport:?}"), problems)
}

/// Inflate and deflate over PCI: QEMU and the guest agree at every step, MemTotal follows the
/// deflate-on-oom setting, and the Rust driver's figures equal the C driver's.
#[test]
fn both_drivers_agree_on_every_step_pci() -> Result<()> {
    both_drivers_walk(Transport::Pci, &[768, 512, 256, 640, 1024])
}

/// The same over virtio-mmio on microvm.
#[test]
fn both_drivers_agree_on_every_step_mmio() -> Result<()> {
    both_drivers_walk(Transport::Mmio, &[768, 384, 896, 1024])
}

/// A stat from `guest-stats`, or `None` if the driver does not report it (QEMU shows -1).
fn stat(stats: &Value, key: &str) -> Option<u64> {
    stats["stats"][key].as_u64()
}

/// Wait for a `guest-stats` update newer than `after` (QEMU's `last-update`, seconds).
fn fresh_stats(vm: &mut Vm, after: u64) -> Result<Value> {
    let dev = "/machine/peripheral/balloon0";
    let t0 = Instant::now();
    loop {
        let s = vm.qmp().qom_get(dev, "guest-stats")?;
        if s["last-update"].as_u64().unwrap_or(0) > after {
            return Ok(s);
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(Error::other(format!(
                "no guest stats newer than {after} after 30 s: {s}"
            )));
        }
        sleep(Duration::from_millis(200));
    }
}

/// The stats the guest sent must describe the guest's /proc/meminfo read right after: the total
/// exactly, free and available memory within `tol_kb`.
fn check_stats(what: &str, stats: &Value, m: &BTreeMap<String, u64>, problems: &mut Vec<String>) {
    let tol_kb = 16 * 1024;
    let mut bad = |s: String| problems.push(format!("{what}: {s}"));
    match stat(stats, "stat-total-memory") {
        Some(t) if t == m["MemTotal"] * 1024 => {}
        t => bad(format!(
            "stat-total-memory {t:?} but MemTotal {} kB",
            m["MemTotal"]
        )),
    }
    for (key, field) in [
        ("stat-free-memory", "MemFree"),
        ("stat-available-memory", "MemAvailable"),
    ] {
        match stat(stats, key) {
            Some(v) if (v / 1024).abs_diff(m[field]) <= tol_kb => {}
            v => bad(format!(
                "{key} {v:?} bytes but {field} {} kB (tolerance {tol_kb} kB)",
                m[field]
            )),
        }
    }
}

/// Guest statistics over the stats queue: with deflate-on-oom off, so the total moves, the stats
/// follow MemTotal exactly and MemFree/MemAvailable closely, before and after inflating, and both
/// drivers report the same set of statistics.
#[test]
fn both_drivers_report_plausible_guest_stats() -> Result<()> {
    require_rust()?;
    let mut problems = Vec::new();
    let mut reported = Vec::new();
    for d in Driver::ALL {
        let what = format!("{d} driver stats");
        let mut vm = Vm::boot(config(&format!("stats-{d}"), Transport::Pci, false))?;
        vm.load_driver(d)?;
        let dev = "/machine/peripheral/balloon0";
        vm.qmp()
            .qom_set(dev, "guest-stats-polling-interval", serde_json::json!(1))?;
        let interval = vm.qmp().qom_get(dev, "guest-stats-polling-interval")?;
        if interval != 1 {
            problems.push(format!(
                "{what}: guest-stats-polling-interval reads back as {interval}"
            ));
        }
        let first = fresh_stats(&mut vm, 0)?;
        let m = vm.meminfo()?;
        // Taken just after a fresh update: the guest is idle, so the values are still current.
        check_stats(&format!("{what}, full size"), &first, &m, &mut problems);
        let free_before = stat(&first, "stat-free-memory").unwrap_or(0);

        vm.qmp().balloon(512 << 20)?;
        vm.wait_balloon_actual(512 << 20, MOVE_TIMEOUT)?;
        let (f, _) = settled(&mut vm)?;
        let stamp = vm.qmp().qom_get(dev, "guest-stats")?["last-update"]
            .as_u64()
            .unwrap_or(0);
        let inflated = fresh_stats(&mut vm, stamp)?;
        let m = vm.meminfo()?;
        check_stats(&format!("{what}, 512 MiB"), &inflated, &m, &mut problems);
        // 512 MiB went into the balloon: the free memory the host sees dropped by about as much.
        let free_after = stat(&inflated, "stat-free-memory").unwrap_or(u64::MAX);
        if free_before.saturating_sub(free_after) < f.balloon_kb * 1024 - (32 << 20) {
            problems.push(format!(
                "{what}: stat-free-memory only went from {} to {} MiB with {} MiB ballooned",
                free_before >> 20,
                free_after >> 20,
                f.balloon_kb >> 10
            ));
        }
        let keys: Vec<String> = inflated["stats"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(_, v)| v.as_u64().is_some())
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        eprintln!(
            "{what}: free {} -> {} MiB, total {} MiB, reported {keys:?}",
            free_before >> 20,
            free_after >> 20,
            stat(&inflated, "stat-total-memory").unwrap_or(0) >> 20
        );
        reported.push(keys);
        vm.shutdown()?;
    }
    if reported[0] != reported[1] {
        problems.push(format!(
            "the drivers report different statistics: C {:?}, Rust {:?}",
            reported[0], reported[1]
        ));
    }
    verdict("guest stats", problems)
}

/// Unloading the driver with the balloon inflated gives every page back: QEMU's actual returns to
/// the full size, `Balloon:` and nr_balloon_pages are 0, MemTotal is as at boot, and every page
/// inflated was deflated. Both drivers, both deflate-on-oom settings, identical figures.
#[test]
fn unload_with_balloon_inflated_returns_every_page() -> Result<()> {
    require_rust()?;
    let mut problems = Vec::new();
    for deflate_on_oom in [true, false] {
        let mut runs = Vec::new();
        for d in Driver::ALL {
            let what = format!("{d} driver, deflate-on-oom={}", onoff(deflate_on_oom));
            let mut vm = Vm::boot(config(
                &format!("unload-{d}"),
                Transport::Pci,
                deflate_on_oom,
            ))?;
            let mem = vm.config().mem_bytes();
            let (base, _) = settled(&mut vm)?;
            vm.load_driver(d)?;
            vm.qmp().balloon(384 << 20)?;
            vm.wait_balloon_actual(384 << 20, MOVE_TIMEOUT)?;
            let (inflated, _) = settled(&mut vm)?;
            check_accounting(
                &format!("{what}, inflated"),
                mem,
                &base,
                &inflated,
                deflate_on_oom,
                &mut problems,
            );
            vm.unload_driver(d)?;
            vm.wait_balloon_actual(mem, MOVE_TIMEOUT)
                .map_err(|e| e.context(format!("{what}: unloaded with the balloon inflated")))?;
            let (after, _) = settled(&mut vm)?;
            check_accounting(
                &format!("{what}, unloaded"),
                mem,
                &base,
                &after,
                deflate_on_oom,
                &mut problems,
            );
            if after.balloon_kb != 0
                || after.nr_balloon_pages != 0
                || after.memtotal_kb != base.memtotal_kb
                || after.since(&base).inflated != inflated.since(&base).inflated
                || after.since(&base).deflated != inflated.since(&base).inflated
            {
                problems.push(format!(
                    "{what}: after unloading {after:?}, at boot {base:?}"
                ));
            }
            let dmesg = vm.sh("dmesg")?;
            vm.shutdown()?;
            let rows = vec![
                ("boot".to_string(), base),
                ("384 MiB".into(), inflated),
                ("unloaded".into(), after),
            ];
            eprintln!("{}", table(&what, &rows));
            if dmesg.contains("Out of puff") {
                problems.push(format!("{what}: \"Out of puff\" at 384 MiB of 1024"));
            }
            runs.push(rows);
        }
        compare(
            &format!("unload, deflate-on-oom={}", onoff(deflate_on_oom)),
            &runs[0],
            &runs[1],
            &mut problems,
        );
    }
    verdict("unload with the balloon inflated", problems)
}

/// Load and unload the driver 20 times, the balloon re-inflating to the target QEMU still holds at
/// every load: at the end MemTotal is as at the start, free memory within 4 MiB (on the lean
/// guest), nothing is left in the balloon, and the kernel log is clean (checked at shutdown).
#[test]
fn load_unload_twenty_times_without_a_leak() -> Result<()> {
    require_rust()?;
    const ROUNDS: u64 = 20;
    const TARGET_MIB: u64 = 768;
    let mut problems = Vec::new();
    let mut ends = Vec::new();
    for d in Driver::ALL {
        let what = format!("{d} driver, {ROUNDS} load/unload rounds");
        let t0 = Instant::now();
        // deflate-on-oom off: the managed page count moves with the balloon, so a page that is
        // not given back shows in MemTotal too.
        let mut vm = Vm::boot(config(&format!("reload-{d}"), Transport::Pci, false))?;
        let mem = vm.config().mem_bytes();
        vm.sh("sync; echo 3 > /proc/sys/vm/drop_caches")?;
        let (base, _) = settled(&mut vm)?;
        let start = free_kb(&mut vm)?;
        // The target outlives the driver: every load must inflate to it by itself.
        vm.qmp().balloon(TARGET_MIB << 20)?;
        for round in 1..=ROUNDS {
            vm.load_driver(d)?;
            vm.wait_balloon_actual(TARGET_MIB << 20, MOVE_TIMEOUT)
                .map_err(|e| e.context(format!("{what}: round {round}, loaded")))?;
            let (f, _) = settled(&mut vm)?;
            check_accounting(
                &format!("{what}: round {round}, loaded"),
                mem,
                &base,
                &f,
                false,
                &mut problems,
            );
            vm.unload_driver(d)?;
            vm.wait_balloon_actual(mem, MOVE_TIMEOUT)
                .map_err(|e| e.context(format!("{what}: round {round}, unloaded")))?;
        }
        vm.sh("sync; echo 3 > /proc/sys/vm/drop_caches")?;
        let (end, _) = settled(&mut vm)?;
        let last = free_kb(&mut vm)?;
        check_accounting(
            &format!("{what}: at the end"),
            mem,
            &base,
            &end,
            false,
            &mut problems,
        );
        if end.balloon_kb != 0 || end.nr_balloon_pages != 0 || end.memtotal_kb != base.memtotal_kb {
            problems.push(format!("{what}: at the end {end:?}, at the start {base:?}"));
        }
        let drift = (last.0 + last.1) as i64 - (start.0 + start.1) as i64;
        // On the debug guest, KASAN's quarantine holds on to freed objects, up to a 32nd of
        // memory: free memory says little there, the exact counters above and kmemleak (in
        // `make stress`) do.
        let bound_kb = if vm.config().paths.is_debug() {
            4096 + (MEM_MIB << 10) / 32
        } else {
            4096
        };
        if drift.unsigned_abs() > bound_kb {
            problems.push(format!(
                "{what}: free memory (MemFree + per-CPU lists) {} + {} kB at the start, {} + {} kB at the end",
                start.0, start.1, last.0, last.1
            ));
        }
        eprintln!(
            "{what}: {:.1} s; MemTotal {} -> {} kB, MemFree + per-CPU lists {} + {} -> {} + {} kB \
             ({drift:+} kB), pages inflated {} deflated {}",
            t0.elapsed().as_secs_f64(),
            base.memtotal_kb,
            end.memtotal_kb,
            start.0,
            start.1,
            last.0,
            last.1,
            end.inflated - base.inflated,
            end.deflated - base.deflated
        );
        // Every round inflated the same 256 MiB and gave it all back.
        let pages = ROUNDS * ((MEM_MIB - TARGET_MIB) << 20) / PAGE;
        let moved = end.since(&base);
        if moved.inflated != pages || moved.deflated != pages {
            problems.push(format!(
                "{what}: {} pages inflated and {} deflated, expected {pages} each",
                moved.inflated, moved.deflated
            ));
        }
        vm.shutdown()?;
        ends.push((base, end));
    }
    if ends[0].1.memtotal_kb != ends[1].1.memtotal_kb {
        problems.push(format!(
            "the drivers end with different MemTotal: C {:?}, Rust {:?}",
            ends[0], ends[1]
        ));
    }
    verdict("load/unload loop", problems)
}

/// Free memory in kB counting the pages parked on the per-CPU free lists, which MemFree leaves out:
/// a deflated balloon gives back hundreds of MiB at once and many of those pages stay on those
/// lists, so MemFree alone would look like a leak.
fn free_kb(vm: &mut Vm) -> Result<(u64, u64)> {
    let out = vm.sh("echo 1 > /proc/sys/vm/stat_refresh; cat /proc/meminfo /proc/zoneinfo")?;
    let memfree = out
        .lines()
        .find_map(|l| l.strip_prefix("MemFree:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| Error::other("no MemFree in /proc/meminfo"))?;
    let pcp_pages: u64 = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("count:"))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum();
    Ok((memfree, pcp_pages * (PAGE / 1024)))
}

/// Poll QMP (only: the guest is left alone, see below) until the balloon stops growing after the
/// driver said "Out of puff" on the console: QEMU's actual unchanged for 3 s. Returns the actual.
fn wait_out_of_puff(vm: &mut Vm, timeout: Duration) -> Result<u64> {
    let t0 = Instant::now();
    let mut last = vm.qmp().query_balloon()?;
    let mut since = Instant::now();
    loop {
        sleep(Duration::from_millis(250));
        let now = vm.qmp().query_balloon()?;
        if now != last {
            last = now;
            since = Instant::now();
        }
        if since.elapsed() >= Duration::from_secs(3) && vm.serial_log().contains("Out of puff") {
            return Ok(last);
        }
        if t0.elapsed() > timeout {
            return Err(Error::other(format!(
                "the balloon did not come to rest with \"Out of puff\" within {timeout:?}: actual {} MiB",
                last >> 20
            )));
        }
    }
}

/// Ask for more than the guest can give (16 MiB of 1024, deflate-on-oom off so nothing is given
/// back): the driver backs off ("Out of puff" in dmesg) and the balloon comes to rest; QEMU's
/// actual at that point is honest (the guest's own balloon_inflate count says the same); the guest
/// stays alive with no OOM kill; and the balloon deflates fully afterwards. Both drivers must get
/// about as far.
///
/// The guest has no swap and its root file system lives in RAM, so at the back-off it is down to
/// the allocator's min watermark: any fork then (a shell command) goes to the OOM killer, which
/// finds nothing to kill and panics, with either driver. So the guest is not spoken to until
/// 64 MiB have been given back through QMP; that partial deflate must land exactly too.
#[test]
fn inflating_beyond_what_the_guest_can_give_backs_off() -> Result<()> {
    require_rust()?;
    const SLACK_MIB: u64 = 64;
    let mut problems = Vec::new();
    let mut reached = Vec::new();
    for d in Driver::ALL {
        let what = format!("{d} driver, target 16 MiB of {MEM_MIB}");
        let mut vm = Vm::boot(config(&format!("puff-{d}"), Transport::Pci, false))?;
        let mem = vm.config().mem_bytes();
        let (base, _) = settled(&mut vm)?;
        vm.load_driver(d)?;
        let t0 = Instant::now();
        vm.qmp().balloon(16 << 20)?;
        let backoff =
            wait_out_of_puff(&mut vm, Duration::from_secs(90)).map_err(|e| e.context(&what))?;
        let secs = t0.elapsed().as_secs_f64();
        if backoff <= 16 << 20 {
            problems.push(format!(
                "{what}: reached the target, so the back-off was not exercised"
            ));
        }
        // Give some memory back so the guest can run commands again.
        let slack = backoff + (SLACK_MIB << 20);
        vm.qmp().balloon(slack)?;
        vm.wait_balloon_actual(slack, MOVE_TIMEOUT)
            .map_err(|e| e.context(format!("{what}: deflating by {SLACK_MIB} MiB")))?;
        let alive = vm.sh("echo alive; dmesg | grep -c 'Out of puff'")?;
        let mut lines = alive.lines();
        if lines.next() != Some("alive")
            || lines.next().and_then(|n| n.parse::<u32>().ok()) < Some(1)
        {
            problems.push(format!(
                "{what}: expected the shell to answer and dmesg to say \"Out of puff\": {alive:?}"
            ));
        }
        let (rest, _) = settled(&mut vm)?;
        check_accounting(
            &format!("{what}, backed off and given {SLACK_MIB} MiB back"),
            mem,
            &base,
            &rest,
            false,
            &mut problems,
        );
        // Nothing was deflated before the partial deflate, so the guest's balloon_inflate count is
        // what it held at the back-off: QEMU's actual then must say the same. The driver keeps
        // retrying every 200 ms, and a retry racing the partial deflate may still catch a few
        // pages, which the deflate then gives back as well: allow at most one request (256
        // pages) of that, the same on both sides.
        let inflated = (rest.inflated - base.inflated) * PAGE;
        let deflated = (rest.deflated - base.deflated) * PAGE;
        let late = inflated.wrapping_sub(mem - backoff);
        if late > 256 * PAGE || deflated != (SLACK_MIB << 20) + late {
            problems.push(format!(
                "{what}: QEMU's actual at the back-off left {} kB ballooned, but the guest inflated \
                 {} kB and then deflated {} kB (expected {} kB and {SLACK_MIB} MiB, give or take \
                 one late request on both)",
                (mem - backoff) >> 10,
                inflated >> 10,
                deflated >> 10,
                (mem - backoff) >> 10,
            ));
        }
        vm.qmp().balloon(mem)?;
        vm.wait_balloon_actual(mem, MOVE_TIMEOUT)
            .map_err(|e| e.context(format!("{what}: deflating back")))?;
        let (back, _) = settled(&mut vm)?;
        check_accounting(
            &format!("{what}, deflated"),
            mem,
            &base,
            &back,
            false,
            &mut problems,
        );
        if back.balloon_kb != 0 || back.memtotal_kb != base.memtotal_kb {
            problems.push(format!(
                "{what}: after deflating {back:?}, at boot {base:?}"
            ));
        }
        let log = vm.serial_log();
        for bad in ["invoked oom-killer", "Out of memory", "Kernel panic"] {
            if log.contains(bad) {
                problems.push(format!("{what}: the kernel log says {bad:?}"));
            }
        }
        eprintln!(
            "{what}: backed off after {secs:.1} s at actual {} kB ({} kB ballooned, {} kB \
             inflated late); \"Out of puff\" {} times",
            backoff >> 10,
            (mem - backoff) >> 10,
            late >> 10,
            alive.lines().nth(1).unwrap_or("?")
        );
        vm.shutdown()?;
        reached.push(mem - backoff);
    }
    // Each driver takes what the page allocator gives it: they must end up within 32 MiB.
    if reached[0].abs_diff(reached[1]) > 32 << 20 {
        problems.push(format!(
            "C ballooned {} MiB before backing off, Rust {} MiB",
            reached[0] >> 20,
            reached[1] >> 20
        ));
    }
    verdict("inflating beyond what the guest can give", problems)
}

/// The accounting check itself, without a guest: it must flag the fault an earlier Rust driver
/// had (MemTotal dropping by the balloon although the device offers DEFLATE_ON_OOM), and the
/// opposite one, and accept both correct behaviours.
#[test]
fn accounting_check_catches_memtotal_faults() {
    let mem = MEM_MIB << 20;
    let base = Figures {
        actual: mem,
        balloon_kb: 0,
        memtotal_kb: 1_022_836,
        nr_balloon_pages: 0,
        inflated: 11,
        deflated: 11,
    };
    let ballooned = |memtotal_kb| Figures {
        actual: 512 << 20,
        balloon_kb: 512 << 10,
        memtotal_kb,
        nr_balloon_pages: (512 << 20) / PAGE,
        inflated: 11 + (512 << 20) / PAGE,
        deflated: 11,
    };
    let kept = ballooned(base.memtotal_kb);
    let dropped = ballooned(base.memtotal_kb - (512 << 10));
    let problems = |f: &Figures, deflate_on_oom| {
        let mut p = Vec::new();
        check_accounting("t", mem, &base, f, deflate_on_oom, &mut p);
        p
    };
    assert!(problems(&kept, true).is_empty());
    assert!(problems(&dropped, false).is_empty());
    let p = problems(&dropped, true);
    assert!(p.len() == 1 && p[0].contains("MemTotal"), "{p:?}");
    let p = problems(&kept, false);
    assert!(p.len() == 1 && p[0].contains("MemTotal"), "{p:?}");
    // QEMU and the guest disagreeing, and pages counted twice, are caught too.
    let p = problems(
        &Figures {
            actual: 600 << 20,
            ..kept
        },
        true,
    );
    assert!(p.len() == 1 && p[0].contains("QEMU's actual"), "{p:?}");
    let p = problems(
        &Figures {
            inflated: kept.inflated + 1,
            ..kept
        },
        true,
    );
    assert!(p.len() == 1 && p[0].contains("balloon_inflate"), "{p:?}");
}
