// SPDX-License-Identifier: GPL-2.0
//! `rballoon`: run the rballoon guest interactively, or demonstrate the balloon.

use rballoon_harness::bench::{self, BenchOpts, Workload};
use rballoon_harness::config::{Paths, Serial};
use rballoon_harness::console::Console;
use rballoon_harness::scenario::{self, Step};
use rballoon_harness::{Arch, Driver, Error, QemuProcess, Result, Transport, Vm, VmConfig};
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod stress;
mod stress_guest;

const USAGE: &str = "\
usage: rballoon run  [--mmio] [--mem MiB] [--driver c|rust|none]
       rballoon demo [--mmio] [--mem MiB] [--driver c|rust]
       rballoon bench [--short] [--rounds N] [--mem MiB] [--workloads 1,3,4,5] [--out DIR]
       rballoon stress [--mmio] [--mem MiB] [--driver c|rust] [--seconds N] [--seed N]

run   boot the guest with its console on this terminal (Ctrl-a c: QEMU monitor, Ctrl-a x: quit)
demo  inflate the balloon to half the guest, deflate it again, print a table; exit 0 if the
      balloon reached every target and the guest's Balloon: agreed with QEMU
bench the C driver against ours, alternating, N rounds (default 5, 4096 MiB, every workload;
      --short: 1 round, 2048 MiB, workloads 1-2 and 5); writes bench.md, CSVs and PNG plots to
      --out (default out/bench in the repository); exit 1 if a run failed
stress for --seconds (STRESS_SECONDS, default 1200): random balloon targets, a memory workload,
      compaction, unload/reload and device removal inflated, an OOM hog, fail_page_alloc (debug
      guest); then deflate and check the accounting. --seed (STRESS_SEED, default: the time)
      replays a run. Exit 0 if every check passed

environment: RBALLOON_CACHE (/var/cache/rballoon), RBALLOON_FLAVOUR (guest), RBALLOON_RUST (min), ACCEL (tcg|kvm),
             RBALLOON_BOOT_TIMEOUT (seconds), RBALLOON_KEEP (keep run directories)";

struct Opts {
    transport: Transport,
    mem: u64,
    driver: Option<Driver>,
}

fn parse(args: &[String], default_driver: Option<Driver>) -> std::result::Result<Opts, String> {
    let mut o = Opts {
        transport: Transport::Pci,
        mem: 2048,
        driver: default_driver,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--mmio" => o.transport = Transport::Mmio,
            "--pci" => o.transport = Transport::Pci,
            "--mem" => {
                let v = it.next().ok_or("--mem needs a size in MiB")?;
                o.mem = v.parse().map_err(|_| format!("bad --mem {v:?}"))?;
                if o.mem < 128 {
                    return Err("--mem must be at least 128 MiB".into());
                }
            }
            "--driver" => {
                let v = it.next().ok_or("--driver needs c, rust or none")?;
                o.driver = match v.as_str() {
                    "none" => None,
                    _ => Some(Driver::parse(v).ok_or_else(|| format!("bad --driver {v:?}"))?),
                };
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("", &[][..]),
    };
    let r = match cmd {
        "run" => parse(rest, None).map_err(usage).and_then(run),
        "demo" => parse(rest, Some(Driver::C)).map_err(usage).and_then(demo),
        "bench" => parse_bench(rest).map_err(usage).and_then(bench),
        "stress" => stress_opts(rest).map_err(usage).and_then(run_stress),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(usage(format!("unknown command {cmd:?}"))),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rballoon: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `stress` takes the common options plus `--seconds` and `--seed`.
fn stress_opts(args: &[String]) -> std::result::Result<stress::Opts, String> {
    let env_u64 = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let mut seconds = env_u64("STRESS_SECONDS").unwrap_or(1200);
    let mut seed = env_u64("STRESS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let mut common = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> std::result::Result<u64, String> {
            let v = it.next().ok_or(format!("{name} needs a number"))?;
            v.parse().map_err(|_| format!("bad {name} {v:?}"))
        };
        match a.as_str() {
            "--seconds" => seconds = num("--seconds")?,
            "--seed" => seed = num("--seed")?,
            _ => common.push(a.clone()),
        }
    }
    let mut o = parse(&common, Some(Driver::Rust))?;
    if !common.iter().any(|a| a == "--mem") {
        o.mem = 1024;
    }
    Ok(stress::Opts {
        driver: o.driver.ok_or("stress needs a driver (--driver c|rust)")?,
        seconds,
        seed,
        mem_mib: o.mem,
        transport: o.transport,
    })
}

fn run_stress(o: stress::Opts) -> Result<bool> {
    let t0 = Instant::now();
    let report = stress::run(&o)?;
    println!("{}", report.render(&o));
    eprintln!("stress: took {:.0} s", t0.elapsed().as_secs_f64());
    Ok(report.problems.is_empty())
}

fn usage(msg: String) -> Error {
    Error::other(format!("{msg}\n{USAGE}"))
}

fn config(name: &str, o: &Opts) -> VmConfig {
    VmConfig::new(name).transport(o.transport).mem_mib(o.mem)
}

/// Interactive: QEMU owns the terminal until it exits.
fn run(o: Opts) -> Result<bool> {
    let mut cfg = config("run", &o);
    cfg.serial = Serial::Stdio;
    cfg.paths.check_guest()?;
    let mut qemu = QemuProcess::spawn(&cfg)?;
    let rundir = qemu.rundir().to_owned();
    eprintln!("rballoon: the guest console is this terminal; Ctrl-a c toggles the QEMU monitor (try `info balloon`, `balloon 512`), Ctrl-a x quits.");
    eprintln!(
        "rballoon: QMP {}, HMP {}, guest command channel {}.",
        rundir.join("qmp.sock").display(),
        rundir.join("hmp.sock").display(),
        rundir.join("cmd.sock").display()
    );
    match o.driver {
        Some(d) => eprintln!("rballoon: the {d} balloon driver ({}) is loaded once the guest is up.", d.module()),
        None => eprintln!("rballoon: no balloon driver loaded: type `modprobe virtio_balloon` (C) or `modprobe rballoon` (Rust)."),
    }
    if let Some(d) = o.driver {
        // Load the driver over the command channel while the user has the console. The terminal is
        // in raw mode, hence the explicit \r.
        let boot_timeout = cfg.boot_timeout;
        std::thread::spawn(move || {
            let r = (|| -> Result<()> {
                let deadline = Instant::now() + boot_timeout;
                let mut c =
                    Console::connect(&rundir.join("cmd.sock"), deadline, None, &mut || Ok(()))?;
                c.wait_ready(deadline, &mut || Ok(()))?;
                let (st, out) =
                    c.run(&format!("modprobe {}", d.module()), Duration::from_secs(60))?;
                if st != 0 {
                    return Err(Error::other(format!(
                        "modprobe {} failed ({st}): {}",
                        d.module(),
                        out.trim()
                    )));
                }
                Ok(())
            })();
            match r {
                Ok(()) => eprint!("\r\nrballoon: loaded {}\r\n", d.module()),
                Err(e) => eprint!(
                    "\r\nrballoon: could not load {}: {}\r\n",
                    d.module(),
                    e.to_string().replace('\n', "\r\n")
                ),
            }
        });
    }
    let st = qemu.wait_forever()?;
    qemu.finish_clean();
    Ok(st.success())
}

/// Inflate to half the guest, deflate back, print the table.
fn demo(o: Opts) -> Result<bool> {
    let d = o
        .driver
        .ok_or_else(|| Error::other("demo needs a driver (--driver c|rust)"))?;
    let cfg = config("demo", &o);
    d.require_built(&cfg.paths)?;
    let mem = cfg.mem_mib;
    eprintln!(
        "rballoon demo: {d} driver, {} transport, {mem} MiB guest, accel {}",
        match o.transport {
            Transport::Pci => "PCI",
            Transport::Mmio => match cfg.paths.arch {
                Arch::X86_64 => "MMIO (microvm)",
                Arch::Aarch64 => "MMIO (virt)",
            },
        },
        cfg.accel.name()
    );
    let mut vm = Vm::boot(cfg)?;
    eprintln!(
        "booted in {:.2} s ({})",
        vm.boot_time().as_secs_f64(),
        vm.rundir().display()
    );
    let t0 = Instant::now();
    vm.load_driver(d)?;
    eprintln!(
        "{} bound in {:.2} s",
        d.module(),
        t0.elapsed().as_secs_f64()
    );

    let timeout = Duration::from_secs(120);
    let mut steps: Vec<Step> = vec![scenario::observe(&mut vm, "start", 0.0)?];
    steps.push(scenario::balloon_step(
        &mut vm,
        "inflate",
        mem - mem / 2,
        timeout,
    )?);
    steps.push(scenario::balloon_step(&mut vm, "deflate", mem, timeout)?);
    println!("{}", scenario::table(&steps));
    let ok = steps.iter().all(|s| s.problem.is_none());
    if let Err(e) = vm.shutdown() {
        eprintln!("rballoon: {e}");
        return Ok(false);
    }
    println!("{}", if ok { "demo: OK" } else { "demo: FAILED" });
    Ok(ok)
}

fn parse_bench(args: &[String]) -> std::result::Result<BenchOpts, String> {
    let out = Paths::from_env().repo.join("out/bench");
    let mut o = if args.iter().any(|a| a == "--short") {
        BenchOpts::short(out)
    } else {
        BenchOpts::full(out)
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--short" => {}
            "--rounds" => {
                let v = val()?;
                o.rounds = v.parse().map_err(|_| format!("bad --rounds {v:?}"))?;
                if o.rounds == 0 {
                    return Err("--rounds must be at least 1".into());
                }
            }
            "--mem" => {
                let v = val()?;
                o.mem_mib = v.parse().map_err(|_| format!("bad --mem {v:?}"))?;
                if o.mem_mib < 1024 {
                    return Err("--mem must be at least 1024 MiB".into());
                }
            }
            "--workloads" => {
                let v = val()?;
                let mut w = Vec::new();
                for s in v.split(',') {
                    let x = Workload::parse(s).ok_or(format!("bad workload {s:?} (1-5)"))?;
                    if !w.contains(&x) {
                        w.push(x);
                    }
                }
                o.workloads = w;
            }
            "--out" => o.out = val()?.into(),
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    Ok(o)
}

/// Run the benchmark; false if a run failed (the files are written all the same).
fn bench(o: BenchOpts) -> Result<bool> {
    let res = bench::run(&o)?;
    for (what, why) in &res.failures {
        eprintln!("rballoon bench: FAILED {what}: {why}");
    }
    Ok(res.failures.is_empty())
}
