// SPDX-License-Identifier: GPL-2.0
//! `rballoon bench`: our driver against the C driver on the same kernel, QEMU and guest size.
//!
//! Each round boots the guest once per driver (the order alternates between rounds so a drifting
//! machine load favours neither), runs the chosen workloads and collects one sample per metric.
//! Free page reporting gets its own VM per run (reporting would otherwise discard the memory the
//! speed workload wrote before the balloon gets to it). At the end the samples, the per-driver
//! medians and the ratios ours/C are written as CSV and Markdown, and the plots are drawn.

use crate::bench_plot;
use crate::bench_report::{self as report, Sample, Trace};
use crate::bench_workloads::{self as work, Sink};
use crate::config::{BalloonProps, Paths, VmConfig};
use crate::driver::Driver;
use crate::error::{Context, Result};
use crate::parity::Case;
use crate::vm::Vm;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// The workloads of issue 6 that need their own steps (2, guest CPU, comes with 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// 1 and 2: inflate/deflate speed on untouched and written memory, guest CPU.
    Speed,
    /// 3: huge pages after compaction.
    HugePages,
    /// 4: free page reporting, host RSS over time.
    Reporting,
    /// 5: OOM deflation.
    Oom,
}

impl Workload {
    /// Parse a workload number (2 means the same as 1).
    pub fn parse(s: &str) -> Option<Workload> {
        match s.trim() {
            "1" | "2" | "speed" | "cpu" => Some(Workload::Speed),
            "3" | "hugepages" => Some(Workload::HugePages),
            "4" | "reporting" => Some(Workload::Reporting),
            "5" | "oom" => Some(Workload::Oom),
            _ => None,
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOpts {
    /// Rounds; each boots both drivers.
    pub rounds: u32,
    /// Guest memory, MiB.
    pub mem_mib: u64,
    /// Which workloads.
    pub workloads: Vec<Workload>,
    /// Output directory (created).
    pub out: PathBuf,
    /// The short form's label, for the report.
    pub short: bool,
}

impl BenchOpts {
    /// The defaults of `make bench`: 5 rounds, 4 GiB, every workload.
    pub fn full(out: PathBuf) -> Self {
        BenchOpts {
            rounds: 5,
            mem_mib: 4096,
            workloads: vec![
                Workload::Speed,
                Workload::HugePages,
                Workload::Reporting,
                Workload::Oom,
            ],
            out,
            short: false,
        }
    }

    /// `make bench-short`: 1 round, 2 GiB, speed (with CPU) and OOM deflation.
    pub fn short(out: PathBuf) -> Self {
        BenchOpts {
            rounds: 1,
            mem_mib: 2048,
            workloads: vec![Workload::Speed, Workload::Oom],
            out,
            short: true,
        }
    }
}

/// Everything one benchmark run produced.
#[derive(Default)]
pub struct Results {
    /// The samples.
    pub samples: Vec<Sample>,
    /// Balloon size and RSS over time.
    pub traces: Vec<Trace>,
    /// Runs that failed: (what, why).
    pub failures: Vec<(String, String)>,
    /// Things the reader must know (a metric that could not be measured, and why).
    pub notes: Vec<String>,
    /// Date, machine, accelerator, QEMU, kernel, load.
    pub env: Vec<(String, String)>,
}

fn vm_config(opts: &BenchOpts, driver: Driver, reporting: bool) -> VmConfig {
    let name = format!(
        "bench-{}{}",
        if driver == Driver::C { "c" } else { "rs" },
        if reporting { "-fpr" } else { "" }
    );
    let mut cfg = VmConfig::new(&name).mem_mib(opts.mem_mib);
    cfg.balloon = Some(BalloonProps {
        deflate_on_oom: true,
        free_page_reporting: reporting,
        ..BalloonProps::default()
    });
    cfg.cmd_timeout = std::time::Duration::from_secs(300);
    cfg
}

/// The balloon VM: every workload but reporting.
fn run_balloon_vm(opts: &BenchOpts, sink: &mut Sink, res_env: &mut EnvProbe) -> Result<()> {
    let driver = sink.driver;
    let mut vm = Vm::boot(vm_config(opts, driver, false))?;
    res_env.probe(&mut vm)?;
    vm.load_driver(driver)?;
    for w in &opts.workloads {
        match w {
            Workload::Speed => work::speed(&mut vm, sink).context("workloads 1-2 (speed, CPU)")?,
            Workload::Oom => work::oom(&mut vm, sink).context("workload 5 (OOM deflation)")?,
            Workload::HugePages | Workload::Reporting => {}
        }
    }
    vm.shutdown()
}

/// The driver cases whose huge pages workload 3 counts for `driver`: the Rust driver also with
/// balloon migration refused, the baseline that shows what migration buys, and inflating by
/// whole 2 MiB blocks (`blocks=1`), what that costs the guest.
fn compaction_cases(driver: Driver) -> &'static [Case] {
    match driver {
        Driver::C => &[Case::C],
        Driver::Rust => &[Case::RUST, Case::RUST_NO_MIGRATION, Case::RUST_BLOCKS],
    }
}

/// The reporting VM: free page reporting on.
fn run_reporting_vm(opts: &BenchOpts, sink: &mut Sink, res_env: &mut EnvProbe) -> Result<()> {
    let driver = sink.driver;
    let mut vm = Vm::boot(vm_config(opts, driver, true))?;
    res_env.probe(&mut vm)?;
    vm.load_driver(driver)?;
    work::reporting(&mut vm, sink).context("workload 4 (free page reporting)")?;
    vm.shutdown()
}

/// Facts about the environment, gathered from the first VM.
#[derive(Default)]
struct EnvProbe {
    qemu: Option<String>,
    kernel: Option<String>,
}

impl EnvProbe {
    fn probe(&mut self, vm: &mut Vm) -> Result<()> {
        if self.qemu.is_none() {
            let v = vm.qmp().execute("query-version", None)?;
            let q = &v["qemu"];
            self.qemu = Some(format!("{}.{}.{}", q["major"], q["minor"], q["micro"]));
            self.kernel = Some(vm.sh("uname -r")?.trim().to_owned());
        }
        Ok(())
    }
}

fn host_fact(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|x| x.1.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Run the benchmark; write the files into `opts.out`. Fails if any run failed or a file could not
/// be written (after writing what there is).
pub fn run(opts: &BenchOpts) -> Result<Results> {
    for d in Driver::ALL {
        d.require_built(&VmConfig::new("bench").paths)?;
    }
    fs::create_dir_all(&opts.out).context(format!("creating {}", opts.out.display()))?;
    // Fail before an hour of measuring, not after, if the plots cannot be drawn.
    let font = bench_plot::find_font()?;
    let mut res = Results::default();
    let mut probe = EnvProbe::default();
    let t_start = Instant::now();
    let load_start = loadavg();
    let started = host_fact("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let accel = VmConfig::new("bench").accel.name();
    eprintln!(
        "rballoon bench: {} round(s), {} MiB guests, accel {accel}, workloads {:?}, load {load_start}",
        opts.rounds, opts.mem_mib, opts.workloads
    );
    for round in 1..=opts.rounds {
        // Alternate which driver goes first.
        let order = if round % 2 == 1 {
            [Driver::C, Driver::Rust]
        } else {
            [Driver::Rust, Driver::C]
        };
        for driver in order {
            eprintln!(
                "round {round}/{}: {driver} driver ({}), {:.0} s in",
                opts.rounds,
                driver.module(),
                t_start.elapsed().as_secs_f64()
            );
            let mut sink = Sink {
                round,
                driver,
                samples: &mut res.samples,
                traces: &mut res.traces,
            };
            let balloon_vm = opts.workloads.iter().any(|w| *w != Workload::Reporting);
            if balloon_vm {
                if let Err(e) = run_balloon_vm(opts, &mut sink, &mut probe) {
                    eprintln!("  FAILED: {e}");
                    res.failures
                        .push((format!("round {round}, {driver} driver"), e.to_string()));
                }
            }
            if opts.workloads.contains(&Workload::HugePages) {
                for case in compaction_cases(driver) {
                    if let Err(e) = work::hugepages(*case, &mut sink) {
                        eprintln!("  FAILED: {e}");
                        res.failures.push((
                            format!("round {round}, {case} driver, compaction VM"),
                            e.to_string(),
                        ));
                    }
                }
            }
            if opts.workloads.contains(&Workload::Reporting) {
                if let Err(e) = run_reporting_vm(opts, &mut sink, &mut probe) {
                    eprintln!("  FAILED: {e}");
                    res.failures.push((
                        format!("round {round}, {driver} driver, reporting VM"),
                        e.to_string(),
                    ));
                }
            }
        }
    }
    if opts.workloads.contains(&Workload::Speed) {
        res.notes.push(
            "The host's inflate ceiling is measured beside each driver in the same run: QEMU's \
             CPU time outside its vCPU threads (`/proc/<pid>/task/*/schedstat`; under TCG the \
             balloon's discards run there) over the inflate, less its rate over 1 s without a \
             move, gives the GiB per second the host alone could take; the share is the \
             inflate's speed against it (the host busy that share of the time)."
                .into(),
        );
    }
    if opts.workloads.contains(&Workload::HugePages) {
        res.notes.push(format!(
            "Huge pages (workload 3) are counted on {} MiB guests of their own, one per driver \
             case. Balloon migration off is measured for the Rust driver only \
             (`rballoon migration=0`): the C driver has no switch for it in 7.3, where it is a \
             build option (CONFIG_BALLOON_MIGRATION). `blocks=1` is the Rust driver inflating by \
             whole free 2 MiB blocks first, which the operator must ask for. The huge page \
             allocation is bounded at {} s for every case.",
            work::COMPACTION_MEM_MIB,
            crate::parity::compaction::HUGEPAGE_BOUND_SECS
        ));
    }
    let env = &mut res.env;
    env.push(("date".into(), started));
    env.push((
        "machine".into(),
        format!(
            "{}, {} cores, {}",
            cpu_model(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            host_fact("sh", &["-c", "free -g | awk '/^Mem:/ {print $2 \" GiB\"}'"])
        ),
    ));
    env.push(("commit".into(), repo_commit(&Paths::from_env())));
    env.push(("toolchain".into(), toolchain(&Paths::from_env())));
    env.push(("accelerator".into(), accel.into()));
    env.push((
        "QEMU".into(),
        probe.qemu.clone().unwrap_or_else(|| "unknown".into()),
    ));
    env.push((
        "guest kernel".into(),
        probe.kernel.clone().unwrap_or_else(|| "unknown".into()),
    ));
    env.push((
        "guest".into(),
        format!(
            "{} MiB, 2 vCPUs, virtio-balloon-pci with deflate-on-oom",
            opts.mem_mib
        ),
    ));
    env.push((
        "rounds".into(),
        format!(
            "{}{} (driver order alternates)",
            opts.rounds,
            if opts.short { ", short form" } else { "" }
        ),
    ));
    env.push((
        "host load (1/5/15 min)".into(),
        format!("{load_start} at the start, {} at the end", loadavg()),
    ));
    env.push((
        "duration".into(),
        format!("{:.0} s", t_start.elapsed().as_secs_f64()),
    ));
    write_outputs(opts, &res, &font)?;
    Ok(res)
}

/// The checkout's commit the guest was built from (`git describe`, "-dirty" with local changes).
fn repo_commit(paths: &Paths) -> String {
    host_fact(
        "git",
        &[
            "-C",
            &paths.repo.to_string_lossy(),
            "describe",
            "--always",
            "--dirty",
            "--abbrev=12",
        ],
    )
}

/// The toolchain root's versions as recorded when it was made (scripts/rballoon/root-install.sh).
fn toolchain(paths: &Paths) -> String {
    let root = match paths.rust.as_str() {
        "min" => "root".to_string(),
        other => format!("root-{other}"),
    };
    let file = paths.cache.join(root).join(".rballoon-versions");
    let Ok(text) = std::fs::read_to_string(&file) else {
        return format!("unknown ({} missing)", file.display());
    };
    let wanted = ["rustc", "bindgen", "clang", "qemu-system-x86"];
    let parts: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (pkg, ver) = (w.next()?, w.next()?);
            wanted.contains(&pkg).then(|| format!("{pkg} {ver}"))
        })
        .collect();
    format!("RUST={}: {}", paths.rust, parts.join(", "))
}

/// The Markdown report: environment, table, notes, failures, plots.
pub fn markdown(res: &Results) -> String {
    let rows = report::rows(&res.samples);
    let mut t = String::from("# rballoon bench: ours (rballoon) against C (virtio_balloon)\n\n");
    for (k, v) in &res.env {
        let _ = writeln!(t, "- {k}: {v}");
    }
    t.push('\n');
    t.push_str(&report::markdown_table(&rows));
    t.push_str(
        "\nMedian ±half the range in percent [min–max] over the rounds. ours/C is the ratio of the \
         medians; `better` says which way the metric is better and which driver is: \"same\" when the two ranges overlap (with one round: when the medians are within 2%).\n\
         Workloads: 1 the balloon inflates until the guest keeps 1/8 of its memory and deflates \
         back, timed from the QMP `balloon` command to `query-balloon` reporting the target, on \
         memory never touched and on memory the guest wrote just before; 2 the guest's busy CPU \
         time (/proc/stat) over those moves; 3 on a 1 GiB guest per driver case, a program writes \
         all free memory but 96 MiB and frees one page in two, the balloon inflates into the \
         holes, the program exits, `compact_memory` (again while a pass moves balloon pages), \
         then `nr_hugepages` as many as fit; 4 the guest writes a quarter of its memory and frees it, QEMU's VmRSS sampled \
         every 100 ms until 90% of the growth is gone (separate VM with free-page-reporting=on); \
         5 with the guest kept at 1/8, a process writes a quarter of the guest's memory and gets \
         it only as the balloon deflates on OOM.\n",
    );
    for n in &res.notes {
        let _ = writeln!(t, "\nNote: {n}");
    }
    if !res.failures.is_empty() {
        t.push_str("\n## Failed runs\n\n");
        for (what, why) in &res.failures {
            let _ = writeln!(t, "- {what}: {}", why.replace('\n', " "));
        }
    }
    t.push_str(
        "\n![balloon size over time](balloon-size.png)\n\n![ours/C per metric](ratios.png)\n",
    );
    if res.traces.iter().any(|tr| tr.kind == "rss") {
        t.push_str("\n![QEMU RSS after the guest frees memory](reporting-rss.png)\n");
    }
    t
}

fn write_outputs(opts: &BenchOpts, res: &Results, font: &std::path::Path) -> Result<()> {
    let rows = report::rows(&res.samples);
    let dir = &opts.out;
    report::write(dir, "bench.csv", &report::samples_csv(&res.samples))?;
    report::write(dir, "summary.csv", &report::summary_csv(&rows))?;
    report::write(dir, "traces.csv", &report::traces_csv(&res.traces))?;
    let md = markdown(res);
    report::write(dir, "bench.md", &md)?;
    bench_plot::register_font(font)?;
    bench_plot::balloon_size(&dir.join("balloon-size.png"), &res.traces, opts.mem_mib)?;
    bench_plot::ratios(&dir.join("ratios.png"), &rows)?;
    if res.traces.iter().any(|tr| tr.kind == "rss") {
        bench_plot::reporting_rss(&dir.join("reporting-rss.png"), &res.traces)?;
    }
    println!("{md}");
    eprintln!("rballoon bench: wrote {}", dir.display());
    Ok(())
}
