// SPDX-License-Identifier: GPL-2.0
//! Power management, for both drivers on PCI and on MMIO:
//!
//! - freeze/restore: with the balloon inflated, the guest suspends to idle with `pm_test=devices`
//!   (every device's suspend callback runs, which for virtio is the driver's `freeze`, then every
//!   resume callback, the driver's `restore`). As in C, freeze gives every page back (telling the
//!   host) before the device is reset, and restore inflates again towards the target that still
//!   stands: the balloon must come back to the target with QEMU agreeing, and the rebuilt queues
//!   must carry both directions (a new target, then deflating to zero).
//! - wakeup events: the balloon device is wakeup-capable; with wakeup enabled, every change of
//!   target is a wakeup event (`pm_stay_awake` while the balloon works, `pm_relax` once it is
//!   done), so a suspend cannot cut an adjustment short.
#![cfg(feature = "rust-driver")]

use rballoon_harness::guestmem;
use rballoon_harness::scenario::{balloon_step, observe, Step};
use rballoon_harness::{Driver, Error, Paths, Result, Transport, Vm, VmConfig};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Small guests: suspend and resume walk every device, and TCG is slow.
const MEM_MIB: u64 = 512;

/// Bound on one balloon move.
const MOVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound on suspend plus resume (the test delay is cut to 1 s).
const SUSPEND_TIMEOUT: Duration = Duration::from_secs(90);

fn require_rust() -> Result<()> {
    Driver::Rust.require_built(&VmConfig::new("check").paths)
}

fn boot(name: &str, t: Transport, d: Driver) -> Result<Vm> {
    let mut vm = Vm::boot(VmConfig::new(name).transport(t).mem_mib(MEM_MIB))?;
    vm.load_driver(d)?;
    Ok(vm)
}

/// The sysfs directory of the virtio device `d` is bound to.
fn device_dir(vm: &mut Vm, d: Driver) -> Result<String> {
    let out = vm.sh(&format!(
        "ls -d /sys/bus/virtio/drivers/{}/virtio* | head -n 1",
        d.sysfs_name()
    ))?;
    let dir = out.trim();
    if dir.is_empty() {
        return Err(Error::other(format!("{d} is bound to no virtio device")));
    }
    Ok(dir.to_string())
}

fn read_u64(vm: &mut Vm, path: &str) -> Result<u64> {
    let out = vm.sh(&format!("cat {path}"))?;
    out.trim()
        .parse()
        .map_err(|e| Error::other(format!("{path} holds {out:?}: {e}")))
}

fn step_ok(s: Step) -> Result<Step> {
    s.check()?;
    Ok(s)
}

/// How long free page reporting gets to report what the guest freed (passes are 2 s apart).
const REPORT_WAIT: Duration = Duration::from_secs(6);

/// What the second write leaves free, MiB: enough to stay clear of reclaim and the OOM killer.
const REPORT_KEEP_MIB: u64 = 48;

/// Free pages reported after restore must keep their poison. A reset makes QEMU forget the
/// poison value the driver gave it, and while it is zero QEMU discards reported pages: a driver
/// that does not give it again loses the poison of every page reported from then on, and the
/// page allocator says so ("pagealloc: memory corruption", a splat) when it hands them out.
/// Write most of what is free and free it, so that it is reported, then write nearly all of it:
/// reported pages go to the tail of the free lists, so only a near-full allocation reaches them.
fn reported_pages_keep_their_poison(vm: &mut Vm, what: &str) -> Result<()> {
    for (round, keep_mib) in [("to be reported", None), ("again", Some(REPORT_KEEP_MIB))] {
        let free_mib = vm.meminfo_kb("MemFree")? >> 10;
        let mib = keep_mib.map_or(free_mib * 3 / 4, |k| free_mib.saturating_sub(k));
        let hog = guestmem::hog(vm, mib, 16, MOVE_TIMEOUT)?;
        if !hog.completed() {
            return Err(Error::other(format!(
                "{what}: writing {mib} MiB {round} did not complete: {}",
                hog.output.trim()
            )));
        }
        sleep(REPORT_WAIT);
    }
    vm.check_splats()
}

/// The balloon is sized by what the guest has free (half of it, then three quarters), so that
/// the debug guest, which keeps much more for itself, can give it too.
fn freeze_restore_keeps_the_balloon(t: Transport, d: Driver) -> Result<()> {
    let paths = Paths::from_env();
    let mem = paths.guest_mib(MEM_MIB);
    let mut cfg = VmConfig::new("freeze").transport(t).mem_mib(mem);
    if d == Driver::C && paths.is_debug() {
        // The C driver does not give the poison value again after restore (see
        // `reported_pages_keep_their_poison`): without poisoning its run shows the rest.
        cfg.append = "page_poison=0".into();
    }
    let mut vm = Vm::boot(cfg)?;
    vm.load_driver(d)?;
    let what = format!("{d} driver on {t:?}");
    let free = vm.meminfo_kb("MemFree")? >> 10;
    let (half, more) = (mem - free / 2, mem - free * 3 / 4);
    let inflated = step_ok(balloon_step(&mut vm, "inflate", half, MOVE_TIMEOUT)?)?;

    vm.sh(
        "echo 1 > /sys/module/suspend/parameters/pm_test_delay; echo devices > /sys/power/pm_test",
    )?;
    let t0 = Instant::now();
    let (st, out) = vm.sh_timeout("echo freeze > /sys/power/state", SUSPEND_TIMEOUT)?;
    if st != 0 {
        return Err(Error::other(format!(
            "{what}: suspend to idle failed ({st}): {out}"
        )));
    }
    let suspended = t0.elapsed();
    let log = vm.sh("dmesg | grep -E 'PM: suspend (entry|exit)|suspend debug' || true")?;
    if !log.contains("suspend debug: Waiting for") {
        return Err(Error::other(format!(
            "{what}: the guest's log shows no device suspend (pm_test): {log:?}"
        )));
    }

    // Restored: back at the target that still stands, and QEMU agrees.
    let target = half << 20;
    let back = vm.wait_balloon_actual(target, MOVE_TIMEOUT).map_err(|e| {
        Error::other(format!(
            "{what}: the balloon did not return to its target after freeze/restore: {e}"
        ))
    })?;
    let restored = observe(&mut vm, "restored", back.as_secs_f64())?;
    restored.check()?;
    if restored.balloon_kb != inflated.balloon_kb {
        return Err(Error::other(format!(
            "{what}: Balloon: {} kB before freeze, {} kB after restore",
            inflated.balloon_kb, restored.balloon_kb
        )));
    }
    reported_pages_keep_their_poison(&mut vm, &what)?;
    // The queues rebuilt by restore carry both directions.
    step_ok(balloon_step(&mut vm, "inflate more", more, MOVE_TIMEOUT)?)?;
    let empty = step_ok(balloon_step(&mut vm, "deflate", mem, MOVE_TIMEOUT)?)?;
    if empty.balloon_kb != 0 {
        return Err(Error::other(format!(
            "{what}: {} kB left in the balloon after deflating fully",
            empty.balloon_kb
        )));
    }
    eprintln!(
        "{what}: {} MiB inflated, freeze/restore {:.1} s, back at the target {:.1} s later, \
         then moved and emptied",
        inflated.balloon_kb >> 10,
        suspended.as_secs_f64(),
        back.as_secs_f64()
    );
    vm.check_splats()?;
    vm.shutdown()
}

fn target_changes_are_wakeup_events(t: Transport, d: Driver) -> Result<()> {
    let mut vm = boot("wakeup", t, d)?;
    let what = format!("{d} driver on {t:?}");
    let dev = device_dir(&mut vm, d)?;
    let (st, out) = vm.sh_status(&format!("echo enabled > {dev}/power/wakeup"))?;
    if st != 0 {
        return Err(Error::other(format!(
            "{what}: the balloon device is not wakeup-capable ({dev}/power/wakeup): {out}"
        )));
    }
    // Activations of the device's wakeup source (`wakeup_count` only counts events that would
    // have aborted a suspend in progress).
    let count = format!("{dev}/power/wakeup_active_count");
    let active = format!("{dev}/power/wakeup_active");
    let mut events = read_u64(&mut vm, &count)?;
    for (name, target) in [("inflate", MEM_MIB / 2), ("deflate", MEM_MIB)] {
        step_ok(balloon_step(&mut vm, name, target, MOVE_TIMEOUT)?)?;
        // The event ends once the work is done: shortly after `actual` reached the target.
        let t0 = Instant::now();
        while read_u64(&mut vm, &active)? != 0 {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(Error::other(format!(
                    "{what}: wakeup event still active 10 s after the {name} finished"
                )));
            }
            sleep(Duration::from_millis(100));
        }
        let now = read_u64(&mut vm, &count)?;
        if now <= events {
            return Err(Error::other(format!(
                "{what}: {name} was no wakeup event ({count} stayed at {events})"
            )));
        }
        eprintln!("{what}: {name}: wakeup events {events} -> {now}");
        events = now;
    }
    vm.check_splats()?;
    vm.shutdown()
}

fn each(f: fn(Transport, Driver) -> Result<()>, t: Transport) -> Result<()> {
    require_rust()?;
    for d in [Driver::Rust, Driver::C] {
        f(t, d)?;
    }
    Ok(())
}

#[test]
fn freeze_restore_pci() -> Result<()> {
    each(freeze_restore_keeps_the_balloon, Transport::Pci)
}

#[test]
fn freeze_restore_mmio() -> Result<()> {
    each(freeze_restore_keeps_the_balloon, Transport::Mmio)
}

#[test]
fn wakeup_events_pci() -> Result<()> {
    each(target_changes_are_wakeup_events, Transport::Pci)
}

#[test]
fn wakeup_events_mmio() -> Result<()> {
    each(target_changes_are_wakeup_events, Transport::Mmio)
}
