// SPDX-License-Identifier: GPL-2.0
//! The workloads of `rballoon bench` (issue 6), each run on a booted guest with the driver loaded.
//!
//! Times are taken on the host, from the QMP command until `query-balloon` reports the target
//! (polled every [`POLL`]), so both drivers are timed by the same clock and the same path.
//! Guest-side memory work is done by the static helper `rbbench` (`guest/rbbench.c`).

use crate::bench_report::{self as report, Sample, Trace};
use crate::config::Transport;
use crate::driver::Driver;
use crate::error::{Error, ErrorKind, Result};
use crate::parity::{self, compaction, Case};
use crate::vm::Vm;
use crate::{hostcpu, hostmem};
use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How often `query-balloon` is polled while the balloon moves.
pub const POLL: Duration = Duration::from_millis(10);
/// Bound on any one balloon move; generous, since a failed run must not be one that was only slow.
const MOVE_TIMEOUT: Duration = Duration::from_secs(300);
const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

/// Where the samples of one run go.
pub struct Sink<'a> {
    /// Round, from 1.
    pub round: u32,
    /// The driver under test.
    pub driver: Driver,
    /// Collected samples.
    pub samples: &'a mut Vec<Sample>,
    /// Collected traces.
    pub traces: &'a mut Vec<Trace>,
}

impl Sink<'_> {
    fn sample(&mut self, metric: report::Metric, value: f64) {
        eprintln!(
            "  {:<44} {:>10} {}",
            metric.label,
            report::fmt_num(value),
            metric.unit
        );
        self.samples.push(Sample {
            round: self.round,
            driver: self.driver,
            metric,
            value,
        });
    }

    fn trace(&mut self, kind: &'static str, points: Vec<(f64, f64)>) {
        self.traces.push(Trace {
            round: self.round,
            driver: self.driver,
            kind,
            points,
        });
    }
}

/// The balloon size the workloads inflate to: the guest keeps 1/8 of its memory (at least 256 MiB).
pub fn small_target(mem: u64) -> u64 {
    (mem / 8).max(256 * MIB).min(mem)
}

/// Busy jiffies (USER_HZ) of all guest CPUs: everything in /proc/stat's `cpu` line but idle and
/// iowait.
fn cpu_busy(vm: &mut Vm) -> Result<u64> {
    let out = vm.sh("head -n1 /proc/stat")?;
    parse_cpu_busy(&out)
}

fn parse_cpu_busy(out: &str) -> Result<u64> {
    let line = out
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| Error::other(format!("no cpu line in /proc/stat: {out:?}")))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if v.len() < 8 {
        return Err(Error::other(format!("unexpected /proc/stat line {line:?}")));
    }
    // user nice system idle iowait irq softirq steal
    Ok(v[0] + v[1] + v[2] + v[5] + v[6] + v[7])
}

/// Ask for `target` bytes and poll until `actual` equals it. Returns the seconds taken and the
/// balloon size over time (seconds since `t0`, MiB).
fn timed_move(vm: &mut Vm, target: u64, t0: Instant, points: &mut Vec<(f64, f64)>) -> Result<f64> {
    let mem = vm.config().mem_bytes();
    let start = Instant::now();
    vm.qmp().balloon(target)?;
    loop {
        let actual = vm.qmp().query_balloon()?;
        points.push((
            t0.elapsed().as_secs_f64(),
            mem.saturating_sub(actual) as f64 / MIB as f64,
        ));
        if actual == target {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > MOVE_TIMEOUT {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "balloon actual stuck at {} MiB, target {} MiB, after {MOVE_TIMEOUT:?}",
                    actual / MIB,
                    target / MIB
                ),
            ));
        }
        sleep(POLL);
    }
}

/// How long the host is watched without a balloon move, for its CPU time then.
const IDLE_WINDOW: Duration = Duration::from_secs(1);

/// The host's CPU time without a balloon move, ns per second: QEMU's threads other than the vCPUs
/// while `query-balloon` is polled as during a move, so that a move's share of it is what the
/// balloon cost the host.
fn host_idle_rate(vm: &mut Vm, pid: u32) -> Result<f64> {
    let h0 = hostcpu::host_side_ns(pid)?;
    let start = Instant::now();
    while start.elapsed() < IDLE_WINDOW {
        vm.qmp().query_balloon()?;
        sleep(POLL);
    }
    let h1 = hostcpu::host_side_ns(pid)?;
    Ok(h1.saturating_sub(h0) as f64 / start.elapsed().as_secs_f64())
}

/// Workloads 1 and 2 on one kind of memory: inflate until the guest keeps 1/8, deflate back, each
/// timed and with the guest's busy CPU time over it; for the inflate also the host's own CPU time
/// (QEMU outside its vCPUs, less its idle rate): the host's ceiling, GiB per second of it, and the
/// inflate's speed as a share of that. Returns (inflate busy jiffies, deflate busy jiffies, bytes
/// moved).
fn cycle(vm: &mut Vm, sink: &mut Sink, written: bool) -> Result<(u64, u64, u64)> {
    let mem = vm.config().mem_bytes();
    let target = small_target(mem);
    let moved = mem - target;
    let mut points = Vec::new();
    let pid = hostmem::qemu_pid(vm)?;
    let idle = host_idle_rate(vm, pid)?;
    let c0 = cpu_busy(vm)?;
    let h0 = hostcpu::host_side_ns(pid)?;
    let t0 = Instant::now();
    let inflate = timed_move(vm, target, t0, &mut points)?;
    let h1 = hostcpu::host_side_ns(pid)?;
    let c1 = cpu_busy(vm)?;
    let deflate = timed_move(vm, mem, t0, &mut points)?;
    let c2 = cpu_busy(vm)?;
    let gib = moved as f64 / GIB;
    let (mi, md, mc, ms) = if written {
        (
            report::INFLATE_WRITTEN,
            report::DEFLATE_WRITTEN,
            report::CEILING_WRITTEN,
            report::SHARE_WRITTEN,
        )
    } else {
        (
            report::INFLATE_UNTOUCHED,
            report::DEFLATE_UNTOUCHED,
            report::CEILING_UNTOUCHED,
            report::SHARE_UNTOUCHED,
        )
    };
    sink.sample(mi, gib / inflate);
    sink.sample(md, gib / deflate);
    let host = hostcpu::step_secs(
        h1.saturating_sub(h0),
        Duration::from_secs_f64(inflate),
        idle,
    );
    if host > 0.0 {
        // The speed at which the host alone, busy all the time, would move the balloon ...
        sink.sample(mc, gib / host);
        // ... and how close the guest came to it: the host's busy share of the inflate.
        sink.sample(ms, 100.0 * host / inflate);
    }
    sink.trace(if written { "written" } else { "untouched" }, points);
    Ok((c1 - c0, c2 - c1, moved))
}

/// Workloads 1 and 2: inflate and deflate on untouched memory, then again after the guest wrote
/// nearly all of its free memory (so the host really backs, and then discards, what the balloon
/// takes).
pub fn speed(vm: &mut Vm, sink: &mut Sink) -> Result<()> {
    let (i1, d1, m1) = cycle(vm, sink, false)?;
    let avail = vm.meminfo_kb("MemAvailable")? / 1024;
    let mib = avail.saturating_sub(128);
    if mib < 64 {
        return Err(Error::other(format!("only {avail} MiB available to write")));
    }
    eprintln!("  guest writes {mib} MiB and frees it");
    guest_run(
        vm,
        &format!("rbbench touch {mib}"),
        Duration::from_secs(600),
    )?;
    let (i2, d2, m2) = cycle(vm, sink, true)?;
    // USER_HZ is 100 on x86: one jiffy is 10 ms.
    let gib = (m1 + m2) as f64 / GIB;
    sink.sample(report::CPU_INFLATE, (i1 + i2) as f64 * 10.0 / gib);
    sink.sample(report::CPU_DEFLATE, (d1 + d2) as f64 * 10.0 / gib);
    Ok(())
}

/// Run `cmd` in the guest within `timeout`; its output, or an error with it.
fn guest_run(vm: &mut Vm, cmd: &str, timeout: Duration) -> Result<String> {
    let (st, out) = vm.sh_timeout(cmd, timeout)?;
    if st != 0 {
        let dmesg = vm.sh("dmesg | tail -n 15").unwrap_or_default();
        return Err(Error::new(
            ErrorKind::Command,
            format!(
                "guest `{cmd}` exited with {st}: {}\nkernel log:\n{dmesg}",
                out.trim()
            ),
        ));
    }
    Ok(out)
}

/// `ms=<x>` from rbbench's report line.
fn parse_ms(out: &str) -> Result<f64> {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("ms=")?.parse().ok())
        .ok_or_else(|| Error::other(format!("no ms= in rbbench output {out:?}")))
}

/// Start `rbbench <args>` in the background in the guest and wait until it says it is ready.
/// Its pid is left in `/tmp/<name>.pid`. It runs in a subshell so the command shell has no job
/// whose "Done" notice could land in a later command's output.
fn start_background(vm: &mut Vm, name: &str, args: &str) -> Result<()> {
    vm.sh(&format!(
        "( rbbench {args} > /tmp/{name}.out 2>&1 & echo $! > /tmp/{name}.pid )"
    ))?;
    let t0 = Instant::now();
    loop {
        let (st, out) = vm.sh_status(&format!(
            "grep -q '^ready' /tmp/{name}.out && echo READY || \
             {{ kill -0 $(cat /tmp/{name}.pid) 2>/dev/null && echo RUNNING || cat /tmp/{name}.out; }}"
        ))?;
        if st == 0 && out.contains("READY") {
            return Ok(());
        }
        if !out.contains("RUNNING") {
            return Err(Error::other(format!(
                "guest `rbbench {args}` died before it was ready: {}",
                out.trim()
            )));
        }
        if t0.elapsed() > Duration::from_secs(600) {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("guest `rbbench {args}` not ready after 600 s"),
            ));
        }
        sleep(Duration::from_millis(200));
    }
}

/// Kill the background `rbbench` started as `name` and wait until its memory is freed (a zombie
/// has no VmRSS line any more: its memory is gone).
fn stop_background(vm: &mut Vm, name: &str) -> Result<()> {
    vm.sh(&format!(
        "p=$(cat /tmp/{name}.pid); kill $p; \
         while grep -q VmRSS /proc/$p/status 2>/dev/null; do sleep 0.05; done; true"
    ))
    .map(drop)
}

/// Guest memory for workload 3. The scenario writes nearly all free memory, then compacts it page
/// by page: under TCG that takes about a minute per driver on 1 GiB and four times as long on the
/// benchmark's 4 GiB, and the comparison of the drivers does not depend on the size.
pub const COMPACTION_MEM_MIB: u64 = 1024;

/// Workload 3: the compaction scenario of the parity tests ([`compaction::run`]: fragment, inflate
/// into the holes, compact, ask for huge pages) on a fresh guest with the driver loaded as `case`;
/// records the 2 MiB huge pages obtained. `balloon_migrate`, the balloon's size and QEMU's view
/// are checked by the scenario.
pub fn hugepages(case: Case, sink: &mut Sink) -> Result<()> {
    let mut vm = parity::boot_with(
        "bench-compaction",
        Transport::Pci,
        COMPACTION_MEM_MIB,
        case,
        compaction::configure,
    )?;
    let f = compaction::run(&mut vm, case)?;
    eprintln!(
        "  {case}: balloon pages migrated {}, {} compact_memory write(s) in {:.1} s",
        f.migrated(),
        f.compact_rounds,
        f.compact_secs
    );
    eprintln!(
        "  {case}: {} huge pages of {} asked in {:.1} s (bound {} s, the same for every driver)",
        f.hugepages,
        f.hugepages_asked,
        f.hugepage_secs,
        compaction::HUGEPAGE_BOUND_SECS
    );
    eprintln!(
        "{}",
        compaction::table(&format!("  {case}"), std::slice::from_ref(&f))
    );
    match (case.migration, case.blocks) {
        (true, false) => {
            sink.sample(report::HUGEPAGES, f.hugepages as f64);
            sink.sample(report::COMPACT_MIGRATED, f.migrated_compact as f64);
        }
        (false, _) => sink.sample(report::HUGEPAGES_NOMIGRATE, f.hugepages as f64),
        (true, true) => sink.sample(report::HUGEPAGES_BLOCKS, f.hugepages as f64),
    }
    vm.shutdown()
}

/// Workload 5: with the balloon inflated until the guest keeps 1/8, a process writes a quarter of
/// the guest's memory; it only gets it as the driver deflates on OOM (deflate-on-oom is on).
pub fn oom(vm: &mut Vm, sink: &mut Sink) -> Result<()> {
    let mem = vm.config().mem_bytes();
    let target = small_target(mem);
    let mut points = Vec::new();
    timed_move(vm, target, Instant::now(), &mut points)?;
    let free = vm.meminfo_kb("MemFree")? / 1024;
    let hog = mem / 4 / MIB;
    eprintln!("  hog writes {hog} MiB with {free} MiB free");
    let t0 = Instant::now();
    let out = guest_run(vm, &format!("rbbench hog {hog}"), Duration::from_secs(900))?;
    let host_s = t0.elapsed().as_secs_f64();
    let guest_s = parse_ms(&out)? / 1000.0;
    let actual = vm.qmp().query_balloon()?;
    eprintln!(
        "  balloon gave back {} MiB on OOM ({host_s:.2} s seen from the host)",
        actual.saturating_sub(target) / MIB
    );
    if actual <= target {
        return Err(Error::other(format!(
            "the {} driver did not deflate on OOM: the hog got {hog} MiB with the balloon still at {} MiB",
            sink.driver,
            (mem - actual) / MIB
        )));
    }
    sink.sample(report::OOM_HOG, guest_s);
    timed_move(vm, mem, Instant::now(), &mut points)?;
    Ok(())
}

/// QEMU's resident set in MiB.
fn qemu_rss_mib(pid: u32) -> Result<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .ok_or_else(|| Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// Workload 4 (needs a VM with free page reporting): the guest writes a quarter of its memory and
/// frees it; how long until 90% of it has left QEMU's resident set.
pub fn reporting(vm: &mut Vm, sink: &mut Sink) -> Result<()> {
    let pidfile = vm.rundir().join("qemu.pid");
    let pid: u32 = fs::read_to_string(&pidfile)?
        .trim()
        .parse()
        .map_err(|_| Error::other(format!("bad {}", pidfile.display())))?;
    let mib = vm.config().mem_mib / 4;
    let before = qemu_rss_mib(pid)?;
    start_background(vm, "hold", &format!("hold {mib}"))?;
    sleep(Duration::from_millis(500));
    let held = qemu_rss_mib(pid)?;
    // What the host had to back for the guest's write is what it should get back.
    let grown = held - before;
    if grown < mib as f64 / 2.0 {
        return Err(Error::other(format!(
            "the guest wrote {mib} MiB but QEMU's RSS only grew from {before:.0} to {held:.0} MiB"
        )));
    }
    let goal = grown * 0.9;
    eprintln!("  guest wrote {mib} MiB (QEMU RSS {before:.0} -> {held:.0} MiB) and frees it");
    let t0 = Instant::now();
    stop_background(vm, "hold")?;
    let mut points = vec![(0.0, held)];
    let mut reached = None;
    let timeout = Duration::from_secs(180);
    loop {
        let t = t0.elapsed();
        let rss = qemu_rss_mib(pid)?;
        points.push((t.as_secs_f64(), rss));
        if reached.is_none() && held - rss >= goal {
            reached = Some(t.as_secs_f64());
        }
        // Keep sampling a little past 90% so the plot shows where it settles.
        if reached.is_some_and(|r| t.as_secs_f64() > r + 2.0) {
            break;
        }
        if t > timeout {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "{} driver: QEMU's RSS went from {held:.0} to {rss:.0} MiB in {timeout:?} after the guest freed {mib} MiB; \
                     90% of the {grown:.0} MiB it had grown by never came back (free page reporting not working?)",
                    sink.driver
                ),
            ));
        }
        sleep(Duration::from_millis(100));
    }
    sink.sample(report::REPORTING_90, reached.unwrap_or(f64::NAN));
    sink.trace("rss", points);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy() {
        let l = "cpu  100 5 200 9000 40 3 7 1 0 0";
        assert_eq!(parse_cpu_busy(l).unwrap(), 100 + 5 + 200 + 3 + 7 + 1);
        assert!(parse_cpu_busy("intr 1 2 3").is_err());
        assert_eq!(
            parse_cpu_busy("[1]+ Done\ncpu  1 1 1 1 1 1 1 1\n").unwrap(),
            6
        );
    }

    #[test]
    fn rbbench_output() {
        assert_eq!(parse_ms("hog mib=512 ms=1234.5\n").unwrap(), 1234.5);
        assert!(parse_ms("oops").is_err());
    }

    #[test]
    fn small_target_keeps_an_eighth() {
        assert_eq!(small_target(4096 * MIB), 512 * MIB);
        assert_eq!(small_target(1024 * MIB), 256 * MIB);
    }
}
