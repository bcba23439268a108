// SPDX-License-Identifier: GPL-2.0
//! One QEMU guest: process lifetime, the guest shell, QMP and HMP.

use crate::config::{Serial, VmConfig};
use crate::console::Console;
use crate::driver::Driver;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::hmp::Hmp;
use crate::qmp::Qmp;
use crate::splat;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Longest unix socket path (sun_path is 108 bytes including the NUL).
const MAX_SOCK_PATH: usize = 107;

static NEXT_VM: AtomicUsize = AtomicUsize::new(0);

/// The QEMU process (really in-root.sh -> bwrap -> QEMU) and its run directory.
///
/// Dropping it without a clean shutdown kills QEMU, waits until it is gone, keeps the run directory
/// and prints where the serial log is, with its last lines.
pub struct QemuProcess {
    name: String,
    child: Option<Child>,
    rundir: PathBuf,
    serial: Serial,
    /// QEMU's own pid, from its -pidfile (bwrap's child, so not `child.id()`).
    qemu_pid: Option<u32>,
    /// Why QEMU is gone, once it is: returned again by every later [`QemuProcess::alive`].
    exited: Option<Error>,
    clean: bool,
}

impl QemuProcess {
    /// Create a fresh run directory and start QEMU for `cfg`.
    pub fn spawn(cfg: &VmConfig) -> Result<Self> {
        let n = NEXT_VM.fetch_add(1, Ordering::Relaxed);
        let rundir = cfg
            .paths
            .run_dir()
            .join(format!("{}-{}-{n}", cfg.name, std::process::id()));
        let longest = rundir.join("cmd.sock").as_os_str().len();
        if longest > MAX_SOCK_PATH {
            return Err(Error::other(format!(
                "socket paths under {} are too long for AF_UNIX ({longest} > {MAX_SOCK_PATH}): use a shorter name or RBALLOON_CACHE",
                rundir.display()
            )));
        }
        if rundir.exists() {
            fs::remove_dir_all(&rundir).context(format!("removing stale {}", rundir.display()))?;
        }
        fs::create_dir_all(&rundir).context(format!("creating {}", rundir.display()))?;
        let args = cfg.qemu_args(&rundir);
        let qemu = cfg.paths.arch.qemu();
        fs::write(
            rundir.join("qemu.cmdline"),
            format!("{qemu} {}\n", shell_words(&args)),
        )?;
        let mut cmd = Command::new(cfg.paths.in_root());
        cmd.arg(qemu)
            .args(&args)
            .env("ACCEL", cfg.accel.name())
            // in-root.sh enters this directory inside the root; the caller's cwd may not exist there.
            .env("RB_CHDIR", &rundir);
        match cfg.serial {
            Serial::File => {
                let log = File::create(rundir.join("qemu.log"))?;
                cmd.stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log);
            }
            Serial::Stdio => {
                cmd.stdin(Stdio::inherit())
                    .stdout(Stdio::inherit())
                    .stderr(Stdio::inherit());
            }
        }
        let child = cmd
            .spawn()
            .context(format!("starting {}", cfg.paths.in_root().display()))?;
        Ok(QemuProcess {
            name: cfg.name.clone(),
            child: Some(child),
            rundir,
            serial: cfg.serial,
            qemu_pid: None,
            exited: None,
            clean: false,
        })
    }

    /// The run directory.
    pub fn rundir(&self) -> &Path {
        &self.rundir
    }

    /// Ok while QEMU runs; an error quoting QEMU's own output once it has exited.
    pub fn alive(&mut self) -> Result<()> {
        if let Some(e) = &self.exited {
            return Err(e.clone());
        }
        let Some(child) = &mut self.child else {
            return Err(Error::new(ErrorKind::Eof, "QEMU was already reaped"));
        };
        match child.try_wait()? {
            None => {
                self.read_pidfile();
                Ok(())
            }
            Some(st) => {
                self.child = None;
                let out = fs::read_to_string(self.rundir.join("qemu.log")).unwrap_or_default();
                let out = crate::conn::tail(out.trim(), 3000);
                let e = Error::new(
                    ErrorKind::Eof,
                    format!(
                        "QEMU exited ({st}); its output: {}; guest kernel log: {}",
                        if out.is_empty() { "none" } else { out },
                        self.rundir.join("serial.log").display()
                    ),
                );
                self.exited = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Like [`QemuProcess::alive`], but give a QEMU that is on its way out up to `grace` to finish
    /// (bwrap exits a moment after QEMU closed its sockets).
    pub fn alive_after(&mut self, grace: Duration) -> Result<()> {
        let deadline = Instant::now() + grace;
        loop {
            self.alive()?;
            if Instant::now() >= deadline {
                return Ok(());
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Wait up to `timeout` for QEMU to exit by itself; reap it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let Some(child) = &mut self.child else {
            return Err(Error::new(ErrorKind::Eof, "QEMU was already reaped"));
        };
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                self.wait_qemu_gone(Duration::from_secs(5));
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("QEMU did not exit within {timeout:?}"),
                ));
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the interactive QEMU (`Serial::Stdio`) to exit, without a bound.
    pub fn wait_forever(&mut self) -> Result<ExitStatus> {
        let st = self
            .child
            .take()
            .ok_or_else(|| Error::other("QEMU was already reaped"))?
            .wait()?;
        self.wait_qemu_gone(Duration::from_secs(5));
        Ok(st)
    }

    /// Kill QEMU and reap it.
    ///
    /// QEMU itself is killed first, by the pid from its -pidfile: its parent bwrap then reaps it
    /// and exits, and we reap bwrap. Killing bwrap first would also take QEMU down (in-root.sh
    /// runs it with --die-with-parent), but would leave QEMU as a zombie of init until init gets
    /// round to it. bwrap is killed as well if it has not exited within a few seconds.
    pub fn kill(&mut self) {
        self.read_pidfile();
        if let Some(pid) = self.qemu_pid {
            if qemu_running(pid) {
                let _ = signal(pid, "KILL");
            }
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.wait_qemu_gone(Duration::from_secs(10));
    }

    fn read_pidfile(&mut self) {
        if self.qemu_pid.is_none() {
            self.qemu_pid = fs::read_to_string(self.rundir.join("qemu.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok());
        }
    }

    /// QEMU's own pid, while it runs.
    fn running_pid(&mut self) -> Result<u32> {
        self.alive()?;
        match self.qemu_pid {
            Some(pid) if qemu_running(pid) => Ok(pid),
            _ => Err(Error::other(format!(
                "QEMU's pid is not in {} (or it is no QEMU)",
                self.rundir.join("qemu.pid").display()
            ))),
        }
    }

    /// Wait until QEMU's own process has died (a zombie counts as dead: it is no longer ours).
    fn wait_qemu_gone(&mut self, timeout: Duration) {
        self.read_pidfile();
        let Some(pid) = self.qemu_pid.take() else {
            return;
        };
        let deadline = Instant::now() + timeout;
        while qemu_running(pid) {
            if Instant::now() >= deadline {
                eprintln!("rballoon: QEMU pid {pid} outlived bwrap; killing it");
                let _ = signal(pid, "KILL");
                return;
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// The serial log so far (empty for an interactive VM).
    pub fn serial_log(&self) -> String {
        fs::read(self.rundir.join("serial.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Declare the run clean: the run directory is removed (unless RBALLOON_KEEP is set).
    pub fn finish_clean(&mut self) {
        self.clean = true;
        if std::env::var_os("RBALLOON_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.rundir);
        }
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        self.kill();
        if self.clean {
            return;
        }
        if self.serial == Serial::Stdio {
            return;
        }
        let log = self.serial_log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(40);
        eprintln!(
            "rballoon: VM {} did not shut down cleanly; kept {}\nrballoon: serial log {} (last {} lines):\n{}",
            self.name,
            self.rundir.display(),
            self.rundir.join("serial.log").display(),
            lines.len() - from,
            lines[from..].join("\n")
        );
    }
}

/// A booted guest whose shell answers.
pub struct Vm {
    cfg: VmConfig,
    // Field order matters for Drop: the sockets close before the process is killed.
    console: Console,
    qmp: Qmp,
    hmp: Option<Hmp>,
    proc: QemuProcess,
    boot_time: Duration,
}

impl Vm {
    /// Start QEMU and wait until the guest shell answers (bounded by `cfg.boot_timeout`).
    pub fn boot(cfg: VmConfig) -> Result<Vm> {
        cfg.paths.check_guest()?;
        if let Some(why) = cfg.unsupported() {
            return Err(Error::other(why));
        }
        let t0 = Instant::now();
        let deadline = t0 + cfg.boot_timeout;
        let mut proc = QemuProcess::spawn(&cfg)?;
        let rundir = proc.rundir().to_owned();
        let what = format!("booting VM {} (run dir {})", cfg.name, rundir.display());
        let mut connect = || -> Result<(Qmp, Console)> {
            let qmp = Qmp::connect(&rundir.join("qmp.sock"), deadline, &mut || proc.alive())?;
            let log = File::create(rundir.join("console.log")).ok();
            let mut console =
                Console::connect(&rundir.join("cmd.sock"), deadline, log, &mut || {
                    proc.alive()
                })?;
            console.wait_ready(deadline, &mut || proc.alive())?;
            Ok((qmp, console))
        };
        match connect() {
            Ok((qmp, console)) => Ok(Vm {
                cfg,
                console,
                qmp,
                hmp: None,
                proc,
                boot_time: t0.elapsed(),
            }),
            // A closed socket usually means QEMU exited: its own message (or the guest's panic in
            // the serial log printed when `proc` drops) says more than the socket error.
            Err(e) => Err(match proc.alive_after(Duration::from_secs(3)) {
                Err(dead) if dead.message() == e.message() => e.context(&what),
                Err(dead) => dead.context(e).context(&what),
                Ok(()) => e.context(&what),
            }),
        }
    }

    /// The configuration it was booted with.
    pub fn config(&self) -> &VmConfig {
        &self.cfg
    }

    /// From starting QEMU until the guest shell answered.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The run directory (sockets, serial.log, console.log, qemu.log, qemu.cmdline).
    pub fn rundir(&self) -> &Path {
        self.proc.rundir()
    }

    /// Run `cmd` in the guest; its output, or an error if it exited non-zero.
    pub fn sh(&mut self, cmd: &str) -> Result<String> {
        let (st, out) = self.sh_status(cmd)?;
        if st != 0 {
            return Err(Error::new(
                ErrorKind::Command,
                format!("guest command {cmd:?} exited with {st}; output:\n{out}"),
            ));
        }
        Ok(out)
    }

    /// Run `cmd` in the guest; its exit status and output (stdout and stderr together).
    pub fn sh_status(&mut self, cmd: &str) -> Result<(i32, String)> {
        let t = self.cfg.cmd_timeout;
        self.sh_timeout(cmd, t)
    }

    /// [`Vm::sh_status`] with its own bound.
    pub fn sh_timeout(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, String)> {
        let r = self.console.run(cmd, timeout);
        if r.is_err() {
            // Say so if the command channel failed because QEMU is gone.
            self.proc.alive()?;
        }
        r
    }

    /// /proc/meminfo as name -> value (kB for the fields that have a unit, counts otherwise).
    ///
    /// Node counters such as `Balloon:` (NR_BALLOON_PAGES) are summed lazily from per-CPU deltas,
    /// so they can lag by a few pages; writing /proc/sys/vm/stat_refresh first folds the deltas and
    /// makes the figures exact.
    pub fn meminfo(&mut self) -> Result<BTreeMap<String, u64>> {
        let out = self.sh("echo 1 > /proc/sys/vm/stat_refresh 2>/dev/null; cat /proc/meminfo")?;
        Ok(parse_table(&out, ':'))
    }

    /// /proc/vmstat as name -> value, after folding the per-CPU deltas as for [`Vm::meminfo`].
    pub fn vmstat(&mut self) -> Result<BTreeMap<String, u64>> {
        let out = self.sh("echo 1 > /proc/sys/vm/stat_refresh 2>/dev/null; cat /proc/vmstat")?;
        Ok(parse_table(&out, ' '))
    }

    /// One /proc/meminfo field in kB; an error if the kernel does not report it.
    pub fn meminfo_kb(&mut self, field: &str) -> Result<u64> {
        self.meminfo()?
            .get(field)
            .copied()
            .ok_or_else(|| Error::other(format!("/proc/meminfo has no {field} field")))
    }

    /// The QMP session.
    pub fn qmp(&mut self) -> &mut Qmp {
        &mut self.qmp
    }

    /// Run a command on the human monitor socket; connects on first use.
    pub fn hmp(&mut self, cmd: &str) -> Result<String> {
        let mut hmp = match self.hmp.take() {
            Some(h) => h,
            None => {
                let deadline = Instant::now() + Duration::from_secs(10);
                let path = self.proc.rundir().join("hmp.sock");
                Hmp::connect(&path, deadline, &mut || self.proc.alive())?
            }
        };
        let r = hmp.cmd(cmd).context(format!("HMP {cmd:?}"));
        self.hmp = Some(hmp);
        r
    }

    /// Poll `query-balloon` until `actual` equals `target` bytes; how long that took.
    pub fn wait_balloon_actual(&mut self, target: u64, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        let mut last;
        loop {
            last = self.qmp.query_balloon()?;
            if last == target {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() >= timeout {
                break;
            }
            sleep(Duration::from_millis(50));
        }
        Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "balloon actual stayed at {} MiB ({last} bytes), target {} MiB, after {timeout:?}",
                last >> 20,
                target >> 20
            ),
        ))
    }

    /// `modprobe` the driver and wait until it is bound to the balloon device.
    pub fn load_driver(&mut self, d: Driver) -> Result<()> {
        let (st, out) = self.sh_status(&format!("modprobe {}", d.module()))?;
        if st != 0 {
            let present =
                self.sh_status(&format!(
                    "grep -q '/{}.ko:' /lib/modules/$(uname -r)/modules.dep",
                    d.module()
                ))?
                .0 == 0;
            return Err(Error::new(
                ErrorKind::Command,
                if present {
                    format!("modprobe {} failed ({st}): {}", d.module(), out.trim())
                } else {
                    format!(
                        "module {}.ko ({d} driver) is not in the guest initramfs; build it and rebuild the initramfs ({})",
                        d.module(),
                        out.trim()
                    )
                },
            ));
        }
        self.wait_bound(d, true, Duration::from_secs(30))
    }

    /// `rmmod` the driver and wait until the device is unbound.
    pub fn unload_driver(&mut self, d: Driver) -> Result<()> {
        self.sh(&format!("rmmod {}", d.module()))?;
        self.wait_bound(d, false, Duration::from_secs(30))
    }

    /// Is the driver bound to a virtio device?
    pub fn driver_bound(&mut self, d: Driver) -> Result<bool> {
        Ok(self
            .sh_status(&format!(
                "ls -d /sys/bus/virtio/drivers/{}/virtio* >/dev/null 2>&1",
                d.sysfs_name()
            ))?
            .0
            == 0)
    }

    fn wait_bound(&mut self, d: Driver, bound: bool, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        while self.driver_bound(d)? != bound {
            if t0.elapsed() >= timeout {
                let state = self
                    .sh("ls -l /sys/bus/virtio/drivers/ /sys/bus/virtio/devices/ 2>&1; lsmod")
                    .unwrap_or_default();
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{d} driver ({}) still {} after {timeout:?}:\n{state}",
                        d.sysfs_name(),
                        if bound { "not bound" } else { "bound" }
                    ),
                ));
            }
            sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stop QEMU (SIGSTOP) for `d`, then let it go on (SIGCONT): a host that stalls and comes
    /// back, as a VMM stopped by job control or a debugger, or frozen in its cgroup, does. The
    /// guest stops with it. One that keeps the host's time (kvm-clock, or
    /// [`VmConfig::follow_host_clock`]) finds `d` gone when it runs again, and whatever it waited
    /// for with a shorter timeout times out then, unless the host got to it first; one that counts
    /// timer ticks sees no stall at all.
    pub fn stall_host(&mut self, d: Duration) -> Result<()> {
        let pid = self.proc.running_pid()?;
        signal(pid, "STOP")?;
        sleep(d);
        // Should this fail, dropping the VM kills the stopped QEMU (SIGKILL works on it).
        signal(pid, "CONT")
    }

    /// The kernel's serial log so far.
    pub fn serial_log(&self) -> String {
        self.proc.serial_log()
    }

    /// Fail if the serial log contains a splat.
    pub fn check_splats(&self) -> Result<()> {
        let s = splat::scan(&self.serial_log());
        if s.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Splat,
                format!(
                    "{} ({})",
                    splat::report(&s),
                    self.proc.rundir().join("serial.log").display()
                ),
            ))
        }
    }

    /// Quit QEMU over QMP, wait for it to exit, then check the serial log for splats.
    ///
    /// A splat is reported in preference to a failed quit: a guest that panicked has usually taken
    /// QEMU down with it (`panic=-1 -no-reboot`), and the splat is the news.
    pub fn shutdown(mut self) -> Result<()> {
        let quit = self.qmp.quit();
        let exited = self.proc.wait_exit(Duration::from_secs(30));
        if exited.is_err() {
            self.proc.kill();
        }
        self.check_splats()?;
        if let Err(e) = quit.and(exited.map(drop)) {
            return Err(e.context(format!("shutting down VM {}", self.cfg.name)));
        }
        self.proc.finish_clean();
        Ok(())
    }
}

/// Send `sig` (a name `kill` knows: `KILL`, `STOP`, ...) to `pid`.
fn signal(pid: u32, sig: &str) -> Result<()> {
    let st = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .context(format!("running kill -{sig} {pid}"))?;
    if !st.success() {
        return Err(Error::other(format!("kill -{sig} {pid}: {st}")));
    }
    Ok(())
}

/// Is `pid` a live (not zombie) QEMU? The name check guards against a recycled pid.
fn qemu_running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        // "pid (comm) state ...": split after the last ')' since comm may contain one.
        s.contains("(qemu-system")
            && s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Parse `name<sep> value [unit]` lines.
fn parse_table(text: &str, sep: char) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(sep)?;
            let v = v.split_whitespace().next()?.parse().ok()?;
            Some((k.trim().to_owned(), v))
        })
        .collect()
}

/// Quote arguments for a copy-pasteable command line.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || ",.=:/_-+@".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::parse_table;

    #[test]
    fn meminfo_and_vmstat_parse() {
        let m = parse_table(
            "MemTotal:        2014132 kB\nBalloon:               0 kB\nHugePages_Total:       0\n",
            ':',
        );
        assert_eq!(m["MemTotal"], 2014132);
        assert_eq!(m["Balloon"], 0);
        assert_eq!(m["HugePages_Total"], 0);
        let v = parse_table("nr_free_pages 12345\nnr_balloon_pages 7\n", ' ');
        assert_eq!(v["nr_balloon_pages"], 7);
    }
}
