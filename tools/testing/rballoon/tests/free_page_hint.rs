// SPDX-License-Identifier: GPL-2.0
//! Free page hinting (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`) driven by a live migration.
//!
//! QEMU asks the guest for free page hints while it migrates RAM (precopy), and says DONE once
//! the migration is over. The test migrates the guest to an `exec:` target that discards the
//! stream, with the migration's bandwidth capped (so that it is in progress long enough to watch),
//! waits for the migration to complete, resumes the source guest (`cont`, which QEMU allows after
//! a completed migration) and checks:
//!
//! - while the migration runs, the guest took free memory away: `MemFree` fell by most of what
//!   was free, in blocks handed to the host (the Rust driver counts them in debugfs);
//! - QEMU used the hints: it skipped a good part of the guest's free memory, neither sending it
//!   nor reading it as zero pages (`query-migrate`'s RAM figures, see [`MigratedRam`]); a guest
//!   that takes its free memory without telling the host where it is gets nothing skipped;
//! - once DONE is delivered, every block is back: `MemFree` is back within a margin, and the Rust
//!   driver holds no block.
//!
//! Without the `rust-driver` feature only the C driver runs; with it both run, one after the
//! other on fresh guests, and their figures are printed side by side.

use rballoon_harness::qmp::MigratedRam;
use rballoon_harness::{Driver, Error, Result, Transport, Vm, VmConfig};
use serde_json::{json, Value};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Guest memory: most of it is free after boot, so hinting has plenty to take.
const MEM_MIB: u64 = 1024;

/// The migration's bandwidth cap, bytes/s: the guest's used memory (~60 MiB after boot) takes
/// seconds to send, the window in which the guest hints.
///
/// A cap, not a target that stalls before it reads: with a migration thread blocked on a full
/// pipe, QEMU's iothread sometimes gives no hinted block back until the target reads (seen on
/// virtio-mmio), and the Rust driver then lends only its window (`tests/hostile.rs` has that
/// case), so how much the guest hints would depend on QEMU's timing.
const MAX_BANDWIDTH: u64 = 16 << 20;

/// Bound on the whole migration (TCG; the guest's free memory is hinted, so little is sent).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(240);

/// Bound on the blocks coming back after DONE.
const DONE_TIMEOUT: Duration = Duration::from_secs(60);

/// The guest must hand over at least this share of its free memory while the migration runs.
const MIN_HINTED_SHARE: f64 = 0.5;

/// QEMU must have skipped at least this share of what the guest had free; without hinting it
/// skips nothing. A hint spares only pages QEMU's first pass has not reached yet. That pass goes
/// up the guest's addresses at the pace the bandwidth cap sets for the pages it sends, the used
/// ones, most of which (kernel, page cache, modules) lie low; zero pages cost it next to nothing.
/// The guest hints its free 4 MiB blocks from the lowest up as soon as the migration starts, so
/// most of what it hints (at least half its free memory: `MIN_HINTED_SHARE`) should be ahead of
/// the pass. A quarter leaves room for a slow guest on a loaded host.
const MIN_SKIPPED_SHARE: f64 = 0.25;

/// After DONE, `MemFree` must be back to within this much of where it started.
const MEMFREE_MARGIN_KB: u64 = 64 * 1024;

/// Where the Rust driver keeps its hinting counters.
const DEBUGFS: &str = "/sys/kernel/debug/rballoon";

/// What one run measured.
#[derive(Debug, Default)]
struct Figures {
    driver: Option<Driver>,
    transport: Option<Transport>,
    /// `MemFree` before the migration, kB.
    free_before_kb: u64,
    /// Lowest `MemFree` seen while the migration was in progress, kB.
    free_min_kb: u64,
    /// `MemFree` once DONE was handled, kB.
    free_after_kb: u64,
    /// Most blocks held at once during the migration (Rust driver).
    held_max: Option<u64>,
    /// Blocks handed to the host in total (Rust driver).
    hinted: Option<u64>,
    /// Hinting rounds (Rust driver).
    rounds: Option<u64>,
    /// Blocks held after DONE (Rust driver).
    held_after: Option<u64>,
    /// What QEMU did with the guest's RAM.
    ram: Option<MigratedRam>,
    /// From `migrate` to `completed`.
    migration: Duration,
    /// From `cont` until the memory was back.
    back_after: Duration,
}

impl Figures {
    fn row(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        format!(
            "{:<6} | {:<4} | {:>10} | {:>10} | {:>10} | {:>8} | {:>6} | {:>6} | {:>10} | {:>12} | {:>9.1} | {:>7.2}",
            self.driver.map_or("?".into(), |d| d.to_string()),
            self.transport.map_or("?", transport_name),
            self.free_before_kb >> 10,
            self.free_min_kb >> 10,
            self.free_after_kb >> 10,
            opt(self.held_max),
            opt(self.hinted),
            opt(self.rounds),
            opt(self.held_after),
            opt(self.ram.map(|r| r.skipped() >> 20)),
            self.migration.as_secs_f64(),
            self.back_after.as_secs_f64(),
        )
    }

    fn header() -> String {
        format!(
            "{:<6} | {:<4} | {:>10} | {:>10} | {:>10} | {:>8} | {:>6} | {:>6} | {:>10} | {:>12} | {:>9} | {:>7}",
            "driver",
            "bus",
            "free MiB",
            "min MiB",
            "after MiB",
            "held max",
            "hinted",
            "rounds",
            "held after",
            "skipped MiB",
            "migrate s",
            "back s"
        )
    }
}

/// A guest whose balloon offers free page hinting (QEMU adds the iothread it needs) and nothing
/// that would move free memory on its own (no free page reporting).
fn config(name: &str, t: Transport) -> VmConfig {
    let mut cfg = VmConfig::new(name).transport(t).mem_mib(MEM_MIB);
    if let Some(b) = cfg.balloon.as_mut() {
        b.free_page_hint = true;
        b.free_page_reporting = false;
    }
    cfg
}

/// One of the Rust driver's debugfs counters.
fn counter(vm: &mut Vm, name: &str) -> Result<u64> {
    let out = vm.sh(&format!("cat {DEBUGFS}/{name}"))?;
    out.trim()
        .parse()
        .map_err(|e| Error::other(format!("{DEBUGFS}/{name} holds {out:?}: {e}")))
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Pci => "PCI",
        Transport::Mmio => "MMIO",
    }
}

/// `query-migrate`'s status.
fn migration_status(vm: &mut Vm) -> Result<String> {
    let r = vm.qmp().execute("query-migrate", None)?;
    Ok(r["status"].as_str().unwrap_or("none").to_string())
}

/// Migrates the guest running `driver` and measures the hinting; asserts what must hold.
fn hint_during_migration(driver: Driver, t: Transport) -> Result<Figures> {
    let mut vm = Vm::boot(config(&format!("hint-{}", driver.module()), t))?;
    vm.load_driver(driver)?;
    let rust = driver == Driver::Rust;
    let mut f = Figures {
        driver: Some(driver),
        transport: Some(t),
        ..Default::default()
    };
    // Let the boot's page cache and module loading settle.
    sleep(Duration::from_secs(1));
    f.free_before_kb = vm.meminfo_kb("MemFree")?;
    f.free_min_kb = f.free_before_kb;
    if rust {
        let held = counter(&mut vm, "hint_blocks_held")?;
        if held != 0 {
            return Err(Error::other(format!(
                "{held} blocks held before any migration"
            )));
        }
    }

    vm.qmp().execute(
        "migrate-set-parameters",
        Some(json!({ "max-bandwidth": MAX_BANDWIDTH })),
    )?;
    let uri = "exec:cat > /dev/null";
    let t0 = Instant::now();
    vm.qmp().execute("migrate", Some(json!({ "uri": uri })))?;
    let mut held_max = 0;
    loop {
        let status = migration_status(&mut vm)?;
        match status.as_str() {
            "completed" => {
                let r = vm.qmp().execute("query-migrate", None)?;
                f.ram = Some(MigratedRam::from_query_migrate(&r)?);
                break;
            }
            "failed" | "cancelled" => {
                let r: Value = vm.qmp().execute("query-migrate", None)?;
                return Err(Error::other(format!("migration {status}: {r}")));
            }
            _ => {}
        }
        if t0.elapsed() > MIGRATION_TIMEOUT {
            return Err(Error::other(format!(
                "migration still {status} after {MIGRATION_TIMEOUT:?}"
            )));
        }
        // The guest shell answers while the migration is active; once the guest is stopped for
        // the last pass it does not, so only ask while the status says the guest runs.
        if status == "active" || status == "setup" {
            if let Ok((0, out)) =
                vm.sh_timeout("grep MemFree: /proc/meminfo", Duration::from_secs(5))
            {
                if let Some(kb) = out
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    f.free_min_kb = f.free_min_kb.min(kb);
                }
            }
            if rust {
                if let Ok((0, out)) = vm.sh_timeout(
                    &format!("cat {DEBUGFS}/hint_blocks_held"),
                    Duration::from_secs(5),
                ) {
                    if let Ok(n) = out.trim().parse::<u64>() {
                        held_max = held_max.max(n);
                    }
                }
            }
        }
        sleep(Duration::from_millis(300));
    }
    f.migration = t0.elapsed();

    // The source guest is paused after a completed migration; resuming it delivers DONE.
    vm.qmp().execute("cont", None)?;
    let t1 = Instant::now();
    loop {
        let free = vm.meminfo_kb("MemFree")?;
        let held = if rust {
            Some(counter(&mut vm, "hint_blocks_held")?)
        } else {
            None
        };
        f.free_after_kb = free;
        f.held_after = held;
        if free + MEMFREE_MARGIN_KB >= f.free_before_kb && held.unwrap_or(0) == 0 {
            break;
        }
        if t1.elapsed() > DONE_TIMEOUT {
            return Err(Error::other(format!(
                "after DONE: MemFree {} MiB (was {} MiB), {} blocks held, after {DONE_TIMEOUT:?}",
                free >> 10,
                f.free_before_kb >> 10,
                held.map_or("?".into(), |h| h.to_string())
            )));
        }
        sleep(Duration::from_millis(250));
    }
    f.back_after = t1.elapsed();
    if rust {
        f.held_max = Some(held_max);
        f.hinted = Some(counter(&mut vm, "hint_blocks_hinted")?);
        f.rounds = Some(counter(&mut vm, "hint_rounds")?);
    }
    eprintln!("{}\n{}", Figures::header(), f.row());

    // The guest handed over most of its free memory while the migration ran.
    let taken_kb = f.free_before_kb.saturating_sub(f.free_min_kb);
    let share = taken_kb as f64 / f.free_before_kb as f64;
    if share < MIN_HINTED_SHARE {
        return Err(Error::other(format!(
            "{driver} on {}: MemFree fell by only {} MiB of {} MiB ({:.0} %) during the migration",
            transport_name(t),
            taken_kb >> 10,
            f.free_before_kb >> 10,
            share * 100.0
        )));
    }
    // QEMU skipped what the guest hinted: the hints reached it, with the right addresses and
    // lengths of free memory (skipping used memory instead would go unnoticed here: the target
    // discards the stream).
    let ram = f.ram.expect("read when the migration completed");
    let skipped_kb = ram.skipped() >> 10;
    if (skipped_kb as f64) < MIN_SKIPPED_SHARE * f.free_before_kb as f64 {
        return Err(Error::other(format!(
            "{driver} on {}: QEMU skipped only {} MiB of the guest's {} MiB of RAM, {} MiB free \
             (wanted {:.0} %): it sent {} pages and found {} zero, of {} bytes",
            transport_name(t),
            skipped_kb >> 10,
            ram.total >> 20,
            f.free_before_kb >> 10,
            MIN_SKIPPED_SHARE * 100.0,
            ram.normal_pages,
            ram.zero_pages,
            ram.page_size
        )));
    }
    if rust {
        // Blocks of MAX_PAGE_ORDER (4 MiB on x86_64): the count must match the memory taken.
        let blocks = f.hinted.unwrap_or(0);
        if blocks == 0 || f.rounds.unwrap_or(0) == 0 || held_max == 0 {
            return Err(Error::other(format!(
                "the Rust driver hinted nothing: {f:?}"
            )));
        }
        if held_max * 4096 + MEMFREE_MARGIN_KB < taken_kb {
            return Err(Error::other(format!(
                "MemFree fell by {} MiB but at most {held_max} blocks (4 MiB) were held",
                taken_kb >> 10
            )));
        }
    }
    vm.check_splats()?;
    vm.shutdown()?;
    Ok(f)
}

#[cfg(not(feature = "rust-driver"))]
#[test]
fn c_driver_hints_free_pages_during_migration() -> Result<()> {
    for t in Transport::ALL {
        hint_during_migration(Driver::C, t)?;
    }
    Ok(())
}

/// Both drivers on one transport, their figures side by side.
#[cfg(feature = "rust-driver")]
fn rust_and_c(t: Transport) -> Result<()> {
    Driver::Rust.require_built(&VmConfig::new("check").paths)?;
    let rust = hint_during_migration(Driver::Rust, t)?;
    let c = hint_during_migration(Driver::C, t)?;
    eprintln!("\n{}\n{}\n{}", Figures::header(), rust.row(), c.row());
    Ok(())
}

#[cfg(feature = "rust-driver")]
#[test]
fn free_page_hinting_during_migration_pci() -> Result<()> {
    rust_and_c(Transport::Pci)
}

#[cfg(feature = "rust-driver")]
#[test]
fn free_page_hinting_during_migration_mmio() -> Result<()> {
    rust_and_c(Transport::Mmio)
}
