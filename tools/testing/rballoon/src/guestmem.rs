// SPDX-License-Identifier: GPL-2.0
//! Guest memory workloads through the `rbmem` guest helper (`tools/testing/rballoon/guest/rbmem.c`,
//! in the initramfs as `/usr/bin/rbmem`): write memory and free it, hold it, fragment it, or hog it
//! under memory pressure.
//!
//! `hold` and `frag` run in the background of the guest shell (output in `/tmp/rbmem-<n>.out`)
//! until [`Held::release`]; the others run in the foreground.

use crate::error::{Error, ErrorKind, Result};
use crate::vm::Vm;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

static NEXT_JOB: AtomicUsize = AtomicUsize::new(0);

/// The line `rbmem` ends its work with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// MiB written.
    pub mib: u64,
    /// MiB still held afterwards.
    pub kept_mib: u64,
    /// Milliseconds from start until the memory was written.
    pub ms: u64,
}

/// Find the `rbmem <cmd> mib=.. kept_mib=.. ms=..` line in `out`.
pub fn parse_report(cmd: &str, out: &str) -> Option<Report> {
    let prefix = format!("rbmem {cmd} mib=");
    out.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(&prefix)?;
        let mut f = rest.split_whitespace();
        let mib = f.next()?.parse().ok()?;
        let kept_mib = f.next()?.strip_prefix("kept_mib=")?.parse().ok()?;
        let ms = f.next()?.strip_prefix("ms=")?.parse().ok()?;
        Some(Report { mib, kept_mib, ms })
    })
}

/// How far a hog got: the last `rbmem hog progress mib=N` line of `out`.
pub fn parse_hog_progress(out: &str) -> u64 {
    out.lines()
        .rev()
        .find_map(|l| {
            l.trim()
                .strip_prefix("rbmem hog progress mib=")?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The last non-empty line of a command's output, trimmed.
pub fn last_line(out: &str) -> &str {
    out.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("")
}

/// Write `mib` MiB in the guest and free it again (the process exits).
pub fn touch(vm: &mut Vm, mib: u64, timeout: Duration) -> Result<Report> {
    let cmd = format!("rbmem touch {mib}");
    let (st, out) = vm.sh_timeout(&cmd, timeout)?;
    match parse_report("touch", &out) {
        Some(r) if st == 0 => Ok(r),
        _ => Err(Error::new(
            ErrorKind::Command,
            format!("guest `{cmd}` exited with {st}: {}", out.trim()),
        )),
    }
}

/// What a hog run came to.
#[derive(Clone, Debug)]
pub struct HogOutcome {
    /// The hog's exit status (128 + signal when killed, as the shell reports it).
    pub status: i32,
    /// MiB it had written when it stopped.
    pub reached_mib: u64,
    /// Its report, if it got to the end.
    pub report: Option<Report>,
    /// Its output.
    pub output: String,
}

impl HogOutcome {
    /// Did it write everything and exit 0?
    pub fn completed(&self) -> bool {
        self.status == 0 && self.report.is_some()
    }
}

/// Write `mib` MiB in chunks of `step` MiB and exit. Not finishing (killed, out of memory) is an
/// outcome, not an error; errors are for a broken channel or a command that outlived `timeout`.
pub fn hog(vm: &mut Vm, mib: u64, step: u64, timeout: Duration) -> Result<HogOutcome> {
    let (status, output) = vm.sh_timeout(&format!("rbmem hog {mib} {step}"), timeout)?;
    Ok(HogOutcome {
        status,
        reached_mib: parse_hog_progress(&output),
        report: parse_report("hog", &output),
        output,
    })
}

/// Memory an `rbmem hold` or `rbmem frag` keeps in the background of the guest shell.
///
/// Dropping it leaves the process running until the VM goes away; [`Held::release`] ends it.
#[must_use = "the memory stays held until released"]
pub struct Held {
    pid: u32,
    out: String,
    what: String,
    report: Report,
}

impl Held {
    /// `rbmem hold MIB`: write `mib` MiB and keep it.
    pub fn hold(vm: &mut Vm, mib: u64, timeout: Duration) -> Result<Held> {
        Self::start(vm, "hold", &format!("{mib}"), timeout)
    }

    /// `rbmem frag MIB KEEP`: write `mib` MiB, give back all but one page in every `keep`, keep
    /// the rest.
    pub fn frag(vm: &mut Vm, mib: u64, keep: u64, timeout: Duration) -> Result<Held> {
        Self::start(vm, "frag", &format!("{mib} {keep}"), timeout)
    }

    fn start(vm: &mut Vm, cmd: &str, args: &str, timeout: Duration) -> Result<Held> {
        let out = format!(
            "/tmp/rbmem-{}.out",
            NEXT_JOB.fetch_add(1, Ordering::Relaxed)
        );
        let what = format!("rbmem {cmd} {args}");
        // The pid is the last line: an interactive shell may announce the job first. The shell
        // makes the output file before it starts the job: the job's own redirection may come
        // after the first `cat` below (seen once in a bench run).
        let said = vm.sh(&format!(": >{out}; {what} >>{out} 2>&1 & echo $!"))?;
        let pid: u32 = last_line(&said).parse().map_err(|_| {
            Error::other(format!(
                "starting `{what}` in the guest: no pid in {said:?}"
            ))
        })?;
        let t0 = Instant::now();
        loop {
            let text = vm.sh(&format!("cat {out}"))?;
            if text.lines().any(|l| l.trim() == "ready") {
                let report = parse_report(cmd, &text).ok_or_else(|| {
                    Error::other(format!("`{what}` said ready without a report: {text:?}"))
                })?;
                return Ok(Held {
                    pid,
                    out,
                    what,
                    report,
                });
            }
            if vm.sh_status(&format!("kill -0 {pid}"))?.0 != 0 {
                let (st, _) = vm.sh_status(&format!("wait {pid}"))?;
                return Err(Error::new(
                    ErrorKind::Command,
                    format!(
                        "`{what}` exited ({st}) before it was ready: {}",
                        text.trim()
                    ),
                ));
            }
            if t0.elapsed() >= timeout {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("`{what}` not ready after {timeout:?}: {}", text.trim()),
                ));
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// The report it printed once its memory was in place.
    pub fn report(&self) -> Report {
        self.report
    }

    /// End it (SIGTERM) and wait for it; its memory goes back to the guest.
    pub fn release(self, vm: &mut Vm) -> Result<()> {
        self.end(vm)?;
        self.reap(vm)
    }

    /// End it (SIGTERM) without waiting: its memory goes back to the guest as it exits, while the
    /// host already watches. [`Held::reap`] must follow.
    pub fn end(&self, vm: &mut Vm) -> Result<()> {
        vm.sh(&format!("kill -TERM {}", self.pid))?;
        Ok(())
    }

    /// Wait for it once [`Held::end`]ed; an error if it did not end well.
    pub fn reap(self, vm: &mut Vm) -> Result<()> {
        let (st, _) = vm.sh_status(&format!("wait {}", self.pid))?;
        if st != 0 {
            let text = vm.sh(&format!("cat {}", self.out)).unwrap_or_default();
            return Err(Error::new(
                ErrorKind::Command,
                format!("`{}` ended with {st}: {}", self.what, text.trim()),
            ));
        }
        vm.sh(&format!("rm -f {}", self.out))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse() {
        let out = "rbmem frag mib=700 kept_mib=350 ms=1234\nready\n";
        assert_eq!(
            parse_report("frag", out),
            Some(Report {
                mib: 700,
                kept_mib: 350,
                ms: 1234
            })
        );
        assert_eq!(parse_report("hold", out), None);
        assert_eq!(
            parse_report("frag", "rbmem frag mib=7 kept_mib=x ms=1\n"),
            None
        );
    }

    #[test]
    fn hog_progress_is_the_last_line() {
        let out = "rbmem hog progress mib=16\nrbmem hog progress mib=32\nKilled\n";
        assert_eq!(parse_hog_progress(out), 32);
        assert_eq!(parse_hog_progress("sh: rbmem: not found\n"), 0);
    }
}
