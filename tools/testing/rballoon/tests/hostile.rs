// SPDX-License-Identifier: GPL-2.0
//! A host that misbehaves in ways QEMU can be made to, for both drivers:
//!
//! - a target that flips as fast as QMP takes commands (about every millisecond) between "give
//!   nothing", "give half" and "give all but 64 MiB". The driver must follow the latest target,
//!   never block the host or the guest, lose no page and end where the host last asked; after the
//!   storm the guest deflates fully and must be as it was at boot: `MemTotal` unchanged,
//!   `Balloon: 0 kB`, as many pages deflated as inflated (`/proc/vmstat`), and no splat.
//! - a host that sits on a migration: its target does not read for a while, and a program needs
//!   most of the guest's memory while the guest hints. The guest must have hinted before the
//!   program starts (its free memory fell by at least `HINTED_MIN_MIB`, and the Rust driver holds
//!   blocks), and the program must get its memory, neither killed nor waiting for the host: the
//!   shrinker frees the blocks the host gave back, and blocks the host still holds are few. The
//!   C driver frees even blocks still queued; the Rust one never lends more than a small window
//!   the host has not given back (`hint::LEND_WINDOW`, 8 blocks).
//!   Whether QEMU gives blocks back during the stall depends on where its migration thread
//!   blocks: in some runs it held every block until the target read (the Rust driver then held 8
//!   blocks), in others it gave them back at once (and the shrinker freed them for the program).
//!   Before the window, a Rust guest in the first situation died of OOM (seen in CI on MMIO).
//!
//! Asking for more than the guest can give is `inflating_beyond_what_the_guest_can_give_backs_off`
//! in `rust_balloon.rs`; a host that stops answering, used lengths and command ids QEMU never
//! sends are for a device that is not QEMU.
#![cfg(feature = "rust-driver")]

use rballoon_harness::parity::{meminfo_mib, side_by_side};
use rballoon_harness::scenario::{balloon_step, Ledger, Step};
use rballoon_harness::{Driver, Error, Result, Transport, Vm, VmConfig};
use serde_json::json;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Guest memory.
const MEM_MIB: u64 = 1024;

/// The targets the host flips between, in turn: all of it, half, all but 64 MiB.
const FLIP_TARGETS_MIB: [u64; 4] = [MEM_MIB, MEM_MIB / 2, MEM_MIB, 64];

/// How long the host flips.
const FLIP_FOR: Duration = Duration::from_secs(10);

/// Where it leaves the target, and the bound on getting there and back afterwards.
const FINAL_MIB: u64 = MEM_MIB * 3 / 4;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// What one run measured.
struct Figures {
    driver: Driver,
    transport: Transport,
    /// `balloon` commands QEMU took.
    commands: u64,
    /// Inflated and deflated 4 KiB pages during the storm, from `/proc/vmstat`.
    inflated: u64,
    deflated: u64,
    /// Getting to the final target, then back to nothing.
    settle: Step,
    empty: Step,
}

/// Flip the target of a fresh guest running `driver`, then check it came through whole.
fn flip(driver: Driver, transport: Transport) -> Result<Figures> {
    let cfg = VmConfig::new(&format!("flip-{}", driver.module()))
        .transport(transport)
        .mem_mib(MEM_MIB);
    let mut vm = Vm::boot(cfg)?;
    vm.load_driver(driver)?;
    let boot = Ledger::read(&mut vm)?;

    let t0 = Instant::now();
    let mut commands = 0;
    while t0.elapsed() < FLIP_FOR {
        let target = FLIP_TARGETS_MIB[commands as usize % FLIP_TARGETS_MIB.len()];
        vm.qmp().balloon(target << 20)?;
        commands += 1;
    }
    let (inflated, deflated) = boot.since(&Ledger::read(&mut vm)?);
    let settle = balloon_step(&mut vm, "settle", FINAL_MIB, SETTLE_TIMEOUT)?;
    let empty = balloon_step(&mut vm, "empty", MEM_MIB, SETTLE_TIMEOUT)?;
    let what = format!("{driver} on {transport:?} after {commands} flips");
    settle.check().map_err(|e| e.context(&what))?;
    empty.check().map_err(|e| e.context(&what))?;

    let mut problems = boot.differences(&mut vm, &empty)?;
    // The guest still answers, promptly.
    let (st, _) = vm.sh_timeout("true", Duration::from_secs(10))?;
    if st != 0 {
        problems.push(format!("the guest shell returned {st}"));
    }
    if !problems.is_empty() {
        return Err(Error::other(format!("{what}: {}", problems.join("; "))));
    }
    vm.shutdown().map_err(|e| e.context(&what))?;
    Ok(Figures {
        driver,
        transport,
        commands,
        inflated,
        deflated,
        settle,
        empty,
    })
}

fn table(runs: &[Figures]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|f| {
            vec![
                f.driver.to_string(),
                format!("{:?}", f.transport),
                f.commands.to_string(),
                f.inflated.to_string(),
                f.deflated.to_string(),
                format!("{:.2}", f.settle.secs),
                format!("{:.2}", f.empty.secs),
            ]
        })
        .collect();
    side_by_side(
        &format!("target flipping every command for {FLIP_FOR:?}"),
        &[
            "driver", "bus", "commands", "inflated", "deflated", "settle s", "empty s",
        ],
        &rows,
    )
}

fn both_drivers_flip(transport: Transport) -> Result<()> {
    Driver::Rust.require_built(&VmConfig::new("check").paths)?;
    let runs = vec![flip(Driver::C, transport)?, flip(Driver::Rust, transport)?];
    eprintln!("{}", table(&runs));
    Ok(())
}

#[test]
fn a_target_that_flips_every_millisecond_pci() -> Result<()> {
    both_drivers_flip(Transport::Pci)
}

#[test]
fn a_target_that_flips_every_millisecond_mmio() -> Result<()> {
    both_drivers_flip(Transport::Mmio)
}

/// How long the migration target waits before it reads: long enough for the hog below to write
/// its memory meanwhile, which takes the debug guest (KASAN, page poisoning, under TCG) several
/// times as long.
fn hold_secs(vm: &Vm) -> u64 {
    if vm.config().paths.is_debug() {
        90
    } else {
        20
    }
}

/// What the program asks for while the host holds the blocks, MiB: most of the guest's free
/// memory (~970 MiB after boot on the lean guest) ...
const HOG_MIB: u64 = 700;

/// ... but no more than this share of it (the debug guest has ~600 MiB free), so that the hog
/// needs the blocks the host holds and still fits once they are back.
fn hog_mib(free_mib: u64) -> u64 {
    HOG_MIB.min(free_mib * 3 / 4)
}

/// How far `MemFree` must fall between the migration's start and the program's: what the guest
/// hinted while the host sat on the migration, MiB. Half the Rust driver's lending window (8
/// blocks of 4 MiB, `hint::LEND_WINDOW_BYTES`), which is all it hints when the host gives nothing
/// back; the C driver, which queues every block it can allocate, hints hundreds of MiB. Without
/// hinting nothing else takes memory in those 2 s: the program would then find what it needs free,
/// and the case would prove nothing.
const HINTED_MIN_MIB: u64 = 16;

/// What one run of the held-blocks case saw.
struct Held {
    driver: Driver,
    /// `MemFree` before the migration, 2 s into it (when the program starts), and lowest while the
    /// host held the blocks, MiB.
    free_mib: u64,
    free_hinting_mib: u64,
    free_min_mib: u64,
    /// What the program wrote, MiB, and how long that took.
    hog_mib: u64,
    hog: Duration,
    /// Blocks the Rust driver held (lent or kept) when the program started.
    held_at_hog: Option<u64>,
}

fn debugfs(vm: &mut Vm, name: &str) -> Result<u64> {
    let out = vm.sh(&format!("cat /sys/kernel/debug/rballoon/{name}"))?;
    out.trim()
        .parse()
        .map_err(|e| Error::other(format!("rballoon/{name} holds {out:?}: {e}")))
}

/// Migrate a guest running `driver` to a target that holds the stream, run a memory hog while
/// the host holds what it was lent, then let the migration finish and check everything is back.
fn host_holds_hint_blocks(driver: Driver, transport: Transport) -> Result<Held> {
    let mut cfg = VmConfig::new(&format!("hold-{}", driver.module()))
        .transport(transport)
        .mem_mib(MEM_MIB);
    if let Some(b) = cfg.balloon.as_mut() {
        b.free_page_hint = true;
        b.free_page_reporting = false;
    }
    let mut vm = Vm::boot(cfg)?;
    vm.load_driver(driver)?;
    let rust = driver == Driver::Rust;
    let what = format!("{driver} on {transport:?}, host sitting on a migration");
    sleep(Duration::from_secs(1));
    let free_mib = meminfo_mib(&mut vm, "MemFree")?;
    let hold = hold_secs(&vm);
    let hog_mib = hog_mib(free_mib);

    let uri = format!("exec:sleep {hold}; cat > /dev/null");
    let t0 = Instant::now();
    vm.qmp().execute("migrate", Some(json!({ "uri": uri })))?;
    // Let the guest hint what it will while the host holds the stream.
    sleep(Duration::from_secs(2));
    let free_hinting_mib = meminfo_mib(&mut vm, "MemFree")?;
    let mut free_min_mib = free_hinting_mib;
    let held_at_hog = if rust {
        Some(debugfs(&mut vm, "hint_blocks_held")?)
    } else {
        None
    };
    // The guest hinted: it holds blocks the host has (or had) been told are free, and the program
    // needs them back. Seen from the guest's free memory for both drivers, and, for the Rust
    // driver, from its count of blocks lent or kept.
    let hinted_mib = free_mib.saturating_sub(free_hinting_mib);
    if hinted_mib < HINTED_MIN_MIB || held_at_hog == Some(0) {
        return Err(Error::other(format!(
            "{what}: 2 s into the migration MemFree had fallen by {hinted_mib} MiB (from \
             {free_mib} MiB, at least {HINTED_MIN_MIB} wanted){}: the guest did not hint, so the \
             program would need no block back and the case would prove nothing",
            held_at_hog.map_or(String::new(), |n| format!(", {n} blocks held"))
        )));
    }
    let t1 = Instant::now();
    let (st, out) = vm.sh_timeout(&format!("rbbench hog {hog_mib}"), Duration::from_secs(hold))?;
    let hog = t1.elapsed();
    if st != 0 {
        return Err(Error::other(format!(
            "{what}: `rbbench hog {hog_mib}` exited {st} (137: killed by the OOM killer): {}",
            out.trim()
        )));
    }
    if t0.elapsed() >= Duration::from_secs(hold) {
        return Err(Error::other(format!(
            "{what}: the hog ended after the target started reading; the case proves nothing"
        )));
    }
    free_min_mib = free_min_mib.min(meminfo_mib(&mut vm, "MemFree")?);

    // The target reads, the migration completes, `cont` delivers DONE: every block comes back.
    loop {
        let r = vm.qmp().execute("query-migrate", None)?;
        match r["status"].as_str().unwrap_or("none") {
            "completed" => break,
            s @ ("failed" | "cancelled") => {
                return Err(Error::other(format!("{what}: migration {s}: {r}")))
            }
            _ if t0.elapsed() > Duration::from_secs(hold + 120) => {
                return Err(Error::other(format!("{what}: migration not done: {r}")))
            }
            _ => sleep(Duration::from_millis(250)),
        }
    }
    vm.qmp().execute("cont", None)?;
    let t2 = Instant::now();
    loop {
        let free = meminfo_mib(&mut vm, "MemFree")?;
        let held = if rust {
            debugfs(&mut vm, "hint_blocks_held")?
        } else {
            0
        };
        if free + 64 >= free_mib && held == 0 {
            break;
        }
        if t2.elapsed() > Duration::from_secs(60) {
            return Err(Error::other(format!(
                "{what}: after DONE MemFree {free} MiB (was {free_mib}), {held} blocks held"
            )));
        }
        sleep(Duration::from_millis(250));
    }
    vm.shutdown().map_err(|e| e.context(&what))?;
    Ok(Held {
        driver,
        free_mib,
        free_hinting_mib,
        free_min_mib,
        hog_mib,
        hog,
        held_at_hog,
    })
}

#[test]
fn a_host_sitting_on_a_migration_starves_nobody() -> Result<()> {
    Driver::Rust.require_built(&VmConfig::new("check").paths)?;
    let mut rows = Vec::new();
    for d in [Driver::C, Driver::Rust] {
        let h = host_holds_hint_blocks(d, Transport::Mmio)?;
        rows.push(vec![
            h.driver.to_string(),
            h.free_mib.to_string(),
            h.free_hinting_mib.to_string(),
            h.free_min_mib.to_string(),
            h.hog_mib.to_string(),
            format!("{:.2}", h.hog.as_secs_f64()),
            h.held_at_hog.map_or("-".into(), |n| n.to_string()),
        ]);
    }
    eprintln!(
        "{}",
        side_by_side(
            "host sitting on a migration, a hog meanwhile",
            &[
                "driver",
                "free MiB",
                "hinting MiB",
                "min MiB",
                "hog MiB",
                "hog s",
                "held",
            ],
            &rows,
        )
    );
    Ok(())
}
