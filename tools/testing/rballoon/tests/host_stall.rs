// SPDX-License-Identifier: GPL-2.0
//! A host that stalls, then comes back (issue 14): QEMU stopped with SIGSTOP for [`STALL`],
//! longer than the Rust driver's 30 s host timeout, then continued, for both drivers on PCI. The
//! guest stops with QEMU and, keeping the host's time ([`VmConfig::follow_host_clock`]; checked:
//! at least 30 s must pass for it over each stop), finds the stall gone when it runs again, so
//! each of the driver's waits that began before the stop has by then lasted longer than 30 s of
//! its time: it times out unless the host has used the buffer first. Whichever comes first, the
//! balloon must work again and nothing may be lost:
//!
//! - the balloon moving: QEMU stopped once an inflate has begun, and again right after a
//!   deflate was asked for. After each stop the balloon must reach the target it was moving to
//!   without being asked again; then a new target, and back to empty.
//! - free pages being reported: the guest writes most of its memory and frees it, and QEMU is
//!   stopped once it has discarded the first reported pages. Reporting must go on afterwards
//!   (QEMU's resident set falls by [`REPORT_PERCENT`] of what was freed, as in `parity.rs`), and
//!   the balloon must still inflate to a target and deflate fully.
//!
//! At every step QEMU's actual must be the target and agree with the guest's `Balloon:`; at the
//! end as many pages must have been deflated as inflated, `MemTotal` must be as before, and the
//! kernel log must hold no splat.
//!
//! Each stop costs [`STALL`] of wall time: the first test stops QEMU twice per driver (about 75 s
//! each), the second once (about 50 s each).
//!
//! On 12-07 (TCG) no wait of the Rust driver timed out over a stop in any run (it logs when one
//! does, and the tests print the driver's log lines; C waits without a bound): the requests
//! pending at a stop were used as soon as QEMU went on, before the guest's timers fired. A host
//! that keeps a request longer than the driver waits is KUnit's `rballoon_hostile_host`.
#![cfg(feature = "rust-driver")]

use rballoon_harness::parity::reporting::{self, Freed, REPORT_PERCENT, REPORT_TIMEOUT};
use rballoon_harness::parity::{per_case, side_by_side, Case};
use rballoon_harness::scenario::{balloon_step, observe, Ledger, Step};
use rballoon_harness::{hostmem, Error, Paths, Result, Transport, Vm, VmConfig};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long QEMU stays stopped: longer than the Rust driver's host timeout (30 s).
const STALL: Duration = Duration::from_secs(35);

/// The Rust driver's host timeout: the guest must see at least this much time pass over a stop,
/// or none of the driver's waits could time out across it and the case would prove less.
const HOST_TIMEOUT_SECS: f64 = 30.0;

/// Bound on reaching a target, after a stop or not (a second or two under TCG when all is well).
const SETTLE: Duration = Duration::from_secs(60);

/// The guest of the moving balloon: large enough that inflating it to [`INFLATE_MIB`] takes
/// about a second under TCG, so a stop lands while it inflates.
const MOVE_MEM_MIB: u64 = 2048;
const INFLATE_MIB: u64 = 512;

/// The target after the stops: one neither stop was on its way to.
const NEW_MIB: u64 = 1024;

/// The guest of the reporting case: a small one writes its memory quickly; its free memory less
/// the headroom of [`reporting::write_and_free`] (about 800 MiB) takes several reporting passes.
const REPORT_MEM_MIB: u64 = 1024;

/// QEMU's resident set has fallen this far, kB, once the first reported pages are discarded (a
/// report holds up to 64 MiB); nothing else shrinks it while the guest idles.
const REPORTING_BEGUN_KB: u64 = 16 << 10;

/// When QEMU is stopped after a new target was set.
#[derive(Clone, Copy, Debug)]
enum When {
    /// Right after QMP took the target: the guest has the config change, and little else.
    AtOnce,
    /// Once QEMU's actual has moved: requests are going back and forth.
    Moving,
}

/// A stop of QEMU in the moving case.
#[derive(Clone, Copy, Debug)]
struct Stop {
    when: When,
    /// QEMU's actual at the stop, bytes, when known.
    actual: Option<u64>,
    /// How much time the guest saw pass over it, seconds (see [`stall`]).
    guest_secs: f64,
}

/// One balloon step of the moving case.
struct Row {
    step: Step,
    /// QEMU's actual before, bytes.
    from: u64,
    /// Whether QEMU was stopped.
    stop: Option<Stop>,
}

/// Stop QEMU for [`STALL`]; how much time the guest saw pass from `since` (its [`uptime`]
/// before) until it ran again.
fn stall(vm: &mut Vm, since: f64) -> Result<f64> {
    vm.stall_host(STALL)?;
    Ok(uptime(vm)? - since)
}

/// Why a stop the guest saw as `guest_secs` long proves less than it should, if it does.
fn too_short(guest_secs: f64) -> Option<String> {
    (guest_secs < HOST_TIMEOUT_SECS).then(|| {
        format!(
            "the guest saw only {guest_secs:.1} s pass over a stop of {STALL:?}: no wait of the \
             driver's could time out across it"
        )
    })
}

/// The guest's clock (CLOCK_BOOTTIME, /proc/uptime), seconds.
fn uptime(vm: &mut Vm) -> Result<f64> {
    let out = vm.sh("cat /proc/uptime")?;
    out.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::other(format!("/proc/uptime holds {out:?}")))
}

/// One driver's moving case.
struct Moves {
    case: Case,
    rows: Vec<Row>,
    problems: Vec<String>,
}

/// QEMU's actual, polled every 2 ms from the moment `target` was set, once it has left `from`.
fn first_move(vm: &mut Vm, from: u64) -> Result<u64> {
    let t0 = Instant::now();
    loop {
        let actual = vm.qmp().query_balloon()?;
        if actual != from {
            return Ok(actual);
        }
        if t0.elapsed() > SETTLE {
            return Err(Error::other(format!(
                "the balloon did not start moving from {} MiB within {SETTLE:?}",
                from >> 20
            )));
        }
        sleep(Duration::from_millis(2));
    }
}

/// Set the target to `target_mib`, stop QEMU for [`STALL`] at `when`, and wait for the balloon to
/// get there without asking again. `Step::secs` counts from the continue.
fn stalled_step(vm: &mut Vm, name: &str, target_mib: u64, when: When) -> Result<Row> {
    let from = vm.qmp().query_balloon()?;
    let target = target_mib << 20;
    let up = uptime(vm)?;
    vm.qmp().balloon(target)?;
    let actual = match when {
        When::AtOnce => None,
        When::Moving => Some(first_move(vm, from)?),
    };
    let guest_secs = stall(vm, up)?;
    let t0 = Instant::now();
    let stop = Stop {
        when,
        actual,
        guest_secs,
    };
    let reached = vm.wait_balloon_actual(target, SETTLE);
    let mut step = observe(vm, name, t0.elapsed().as_secs_f64())?;
    step.target = target;
    if let Err(e) = reached {
        step.problem = Some(e.to_string());
    }
    Ok(Row {
        step,
        from,
        stop: Some(stop),
    })
}

/// [`balloon_step`] as a row, QEMU left running.
fn step(vm: &mut Vm, name: &str, target_mib: u64) -> Result<Row> {
    let from = vm.qmp().query_balloon()?;
    Ok(Row {
        step: balloon_step(vm, name, target_mib, SETTLE)?,
        from,
        stop: None,
    })
}

/// Print what the driver said in the kernel log: the Rust one says when the host stalled, when
/// it is back, and when it reset the device over reported pages held too long.
fn print_driver_log(vm: &Vm, case: Case) {
    // dev_*() messages: "<driver> <device>: ...".
    let module = format!("{} virtio", case.driver.module());
    for l in vm.serial_log().lines().filter(|l| l.contains(&module)) {
        eprintln!("{case}: {l}");
    }
}

/// The problems of `steps`, each named by its step.
fn step_problems<'a>(steps: impl IntoIterator<Item = &'a Step>) -> Vec<String> {
    steps
        .into_iter()
        .filter_map(|s| Some(format!("{}: {}", s.name, s.problem.as_ref()?)))
        .collect()
}

fn moves(vm: &mut Vm, case: Case) -> Result<Moves> {
    let boot = Ledger::read(vm)?;
    let mem = vm.config().mem_mib;
    let rows = vec![
        stalled_step(vm, "inflate", INFLATE_MIB, When::Moving)?,
        stalled_step(vm, "deflate", mem, When::AtOnce)?,
        step(vm, "new target", NEW_MIB)?,
        step(vm, "empty", mem)?,
    ];
    let mut problems = step_problems(rows.iter().map(|r| &r.step));
    for r in &rows {
        let Some(stop) = r.stop else { continue };
        problems.extend(too_short(stop.guest_secs).map(|p| format!("{}: {p}", r.step.name)));
        if stop.actual == Some(r.step.target) {
            problems.push(format!(
                "{}: the balloon had reached {} MiB before QEMU stopped; the stop caught no \
                 request in flight",
                r.step.name,
                r.step.target >> 20
            ));
        }
    }
    let empty = &rows.last().expect("four rows").step;
    problems.extend(boot.differences(vm, empty)?);
    print_driver_log(vm, case);
    Ok(Moves {
        case,
        rows,
        problems,
    })
}

fn moves_table(title: &str, runs: &[Moves]) -> String {
    let mib = |b: u64| (b >> 20).to_string();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .flat_map(|m| {
            m.rows.iter().map(|r| {
                let (when, at, guest) = match r.stop {
                    Some(s) => (
                        format!("{:?}", s.when),
                        s.actual.map_or("-".into(), mib),
                        format!("{:.1}", s.guest_secs),
                    ),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                vec![
                    m.case.to_string(),
                    r.step.name.clone(),
                    when,
                    guest,
                    mib(r.from),
                    at,
                    mib(r.step.target),
                    mib(r.step.actual),
                    (r.step.balloon_kb >> 10).to_string(),
                    format!("{:.2}", r.step.secs),
                ]
            })
        })
        .collect();
    side_by_side(
        &format!(
            "{title}; QEMU stopped {STALL:?}; guest s: the stop in the guest's time; s: from the \
             continue, or the request"
        ),
        &[
            "driver",
            "step",
            "stop",
            "guest s",
            "from MiB",
            "at stop MiB",
            "target MiB",
            "actual MiB",
            "Balloon: MiB",
            "s",
        ],
        &rows,
    )
}

/// Fail with every driver's problems, if any.
fn verdict<'a>(runs: impl IntoIterator<Item = (Case, &'a [String])>) -> Result<()> {
    let all: Vec<String> = runs
        .into_iter()
        .flat_map(|(case, p)| p.iter().map(move |p| format!("{case} driver: {p}")))
        .collect();
    if all.is_empty() {
        Ok(())
    } else {
        Err(Error::other(all.join("\n")))
    }
}

#[test]
fn a_host_that_stalls_mid_inflate_or_deflate_comes_back_pci() -> Result<()> {
    let runs = per_case(
        "stall-move",
        Transport::Pci,
        MOVE_MEM_MIB,
        // Only inflate and deflate requests can be in flight at a stop: a report held across
        // one is the other case.
        |cfg: &mut VmConfig| {
            cfg.follow_host_clock();
            if let Some(b) = cfg.balloon.as_mut() {
                b.free_page_reporting = false;
            }
        },
        &[Case::C, Case::RUST],
        moves,
        moves_table,
    )?;
    verdict(runs.iter().map(|m| (m.case, m.problems.as_slice())))
}

/// One driver's reporting case.
struct Reports {
    case: Case,
    freed: Freed,
    /// The stop in the guest's time, from before reporting began, seconds.
    guest_secs: f64,
    /// QEMU's resident set when it was stopped, and the least within [`REPORT_TIMEOUT`] after
    /// it continued, kB.
    rss_at_stop_kb: u64,
    rss_after_kb: u64,
    /// How long after the continue until it had fallen by [`REPORT_PERCENT`] of what was freed.
    secs: Option<f64>,
    /// The balloon afterwards: inflated to half, then emptied.
    steps: Vec<Step>,
    problems: Vec<String>,
}

fn reports(vm: &mut Vm, case: Case) -> Result<Reports> {
    let what = format!("{case} driver, QEMU stopped while reporting");
    let boot = Ledger::read(vm)?;
    let (held, freed) = reporting::write_and_hold(vm, case, REPORT_PERCENT)?;
    let up = uptime(vm)?;
    let peak = freed.rss_peak_kb;
    let want_kb = freed.share_kb(REPORT_PERCENT);
    // Freed without waiting for the guest to say so (the debug guest takes seconds), so that
    // QEMU is watched from before mm starts reporting, 2 s after the pages are free.
    held.end(vm)?;
    let begun = hostmem::watch_rss(vm, Duration::from_millis(5), REPORT_TIMEOUT, |kb| {
        kb + REPORTING_BEGUN_KB <= peak
    })?;
    if begun.took.is_none() {
        return Err(Error::other(format!(
            "{what}: QEMU's RSS did not fall from {} MiB within {REPORT_TIMEOUT:?} of the guest \
             freeing {} MiB: no report to stop in",
            peak >> 10,
            freed.mib
        )));
    }
    let mut problems = Vec::new();
    if begun.last_kb + want_kb <= peak {
        problems.push(format!(
            "QEMU's RSS had fallen to {} MiB from {} MiB before it stopped: reporting was all \
             but done, the stop proves nothing",
            begun.last_kb >> 10,
            peak >> 10
        ));
    }
    let guest_secs = stall(vm, up)?;
    problems.extend(too_short(guest_secs));
    held.reap(vm)?;
    let after = hostmem::watch_rss(vm, Duration::from_millis(250), REPORT_TIMEOUT, |kb| {
        kb + want_kb <= peak
    })?;
    if after.took.is_none() {
        problems.push(format!(
            "after the stop QEMU's RSS fell only to {} MiB from {} MiB within {REPORT_TIMEOUT:?} \
             (the guest freed {} MiB; wanted {REPORT_PERCENT}% of it back): reporting stopped",
            after.min_kb >> 10,
            peak >> 10,
            freed.mib
        ));
    }
    let mem = vm.config().mem_mib;
    let steps = vec![
        balloon_step(vm, "inflate", mem / 2, SETTLE)?,
        balloon_step(vm, "empty", mem, SETTLE)?,
    ];
    problems.extend(step_problems(&steps));
    problems.extend(boot.differences(vm, &steps[1])?);
    print_driver_log(vm, case);
    Ok(Reports {
        case,
        freed,
        guest_secs,
        rss_at_stop_kb: begun.last_kb,
        rss_after_kb: after.min_kb,
        secs: after.took.map(|d| d.as_secs_f64()),
        steps,
        problems,
    })
}

fn reports_table(title: &str, runs: &[Reports]) -> String {
    let mib = |kb: u64| (kb >> 10).to_string();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let mut row = vec![
                r.case.to_string(),
                format!("{:.1}", r.guest_secs),
                r.freed.mib.to_string(),
                mib(r.freed.rss_peak_kb),
                mib(r.rss_at_stop_kb),
                mib(r.rss_after_kb),
                r.secs.map_or("not reached".into(), |s| format!("{s:.1}")),
            ];
            row.extend(r.steps.iter().map(|s| {
                let reached = if s.problem.is_none() { "" } else { " FAILED" };
                format!("{} {:.2}{reached}", s.actual >> 20, s.secs)
            }));
            row
        })
        .collect();
    let pct = format!("s to {REPORT_PERCENT}%");
    side_by_side(
        &format!("{title}; QEMU stopped {STALL:?} while reporting; RSS of QEMU"),
        &[
            "driver",
            "guest s",
            "freed MiB",
            "RSS peak MiB",
            "at stop MiB",
            "after MiB",
            pct.as_str(),
            "inflate: MiB s",
            "empty: MiB s",
        ],
        &rows,
    )
}

#[test]
fn a_host_that_stalls_mid_report_comes_back_pci() -> Result<()> {
    let runs = per_case(
        "stall-report",
        Transport::Pci,
        Paths::from_env().guest_mib(REPORT_MEM_MIB),
        |cfg: &mut VmConfig| {
            cfg.follow_host_clock();
            reporting::configure(cfg);
            if let Some(b) = cfg.balloon.as_mut() {
                b.free_page_reporting = true;
            }
        },
        &[Case::C, Case::RUST],
        reports,
        reports_table,
    )?;
    verdict(runs.iter().map(|r| (r.case, r.problems.as_slice())))
}
