// SPDX-License-Identifier: GPL-2.0
//! The guest command channel: a busybox `sh` on the guest's virtio console (hvc0), reached through
//! QEMU's `cmd.sock` chardev.
//!
//! The guest shell does not echo and has no prompt. A command is sent as
//! `{ CMD ; } </dev/null 2>&1; echo "@@RB-END-<id> $?"` and its output is everything up to the line
//! that starts with `@@RB-END-<id> `. Commands run in the shell itself (braces, not a subshell), so
//! `cd` and variables persist between calls; a command must therefore not `exit`. Each line sent
//! must stay under the tty's 4095-byte canonical line limit.

use crate::conn::{tail, Conn};
use crate::error::{Error, ErrorKind, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest line the guest tty accepts in canonical mode, minus the wrapper we add.
const MAX_LINE: usize = 4000;

/// A connection to the guest shell.
pub struct Console {
    conn: Conn,
    next_id: u64,
    /// Set when a command timed out: its end marker may still arrive, so resynchronise first.
    dirty: bool,
    /// Transcript of the session (commands prefixed with `> `), for post-mortems.
    log: Option<File>,
}

impl Console {
    /// Connect to the chardev socket at `path` (retrying until QEMU created it).
    pub fn connect(
        path: &Path,
        deadline: Instant,
        log: Option<File>,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Self> {
        let conn = Conn::connect(path, deadline, alive)?;
        Ok(Console {
            conn,
            next_id: 1,
            dirty: false,
            log,
        })
    }

    fn log(&mut self, s: &str) {
        if let Some(f) = &mut self.log {
            // The transcript is a debugging aid; failing to write it must not fail the test.
            let _ = f.write_all(s.as_bytes());
        }
    }

    /// Wait until the guest shell answers.
    ///
    /// Sends `echo @@RB-READY-<n>` every 500 ms until one comes back. Input sent before the shell
    /// started is delivered late and in bulk, so afterwards a unique sync token is echoed and
    /// everything before it is discarded; from then on the channel carries only our commands.
    pub fn wait_ready(
        &mut self,
        deadline: Instant,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let mut n = 0u32;
        'outer: loop {
            alive()?;
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "guest shell on hvc0 did not answer after {n} probes; last console input: {:?}",
                        tail(&self.conn.pending(), 300)
                    ),
                ));
            }
            self.conn.send(&format!("echo @@RB-READY-{n}\n"))?;
            n += 1;
            let round = (Instant::now() + Duration::from_millis(500)).min(deadline);
            loop {
                match self.conn.read_line(round) {
                    Ok(line) => {
                        self.log(&format!("{line}\n"));
                        if line.starts_with("@@RB-READY-") {
                            break 'outer;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Timeout => break,
                    Err(e) => return Err(e),
                }
            }
        }
        self.sync(deadline.max(Instant::now() + Duration::from_secs(10)))
    }

    /// Turn the tty's echo off, echo a unique token and drop every line before it.
    ///
    /// hvc ttys reset their termios when the last file descriptor closes, so an `stty -echo` run
    /// before the shell opened hvc0 does not stick; doing it from the shell itself does (with echo
    /// off, busybox's line editor also steps aside and reads plain lines).
    fn sync(&mut self, deadline: Instant) -> Result<()> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let token = format!("@@RB-SYNC-{}-{nanos}", std::process::id());
        self.conn
            .send(&format!("stty -echo -onlcr 2>/dev/null; echo {token}\n"))?;
        loop {
            let line = self
                .conn
                .read_line(deadline)
                .map_err(|e| e.context("resynchronising the guest shell"))?;
            if line == token {
                self.dirty = false;
                return Ok(());
            }
        }
    }

    /// Run `cmd` in the guest shell; return its exit status and its combined stdout and stderr.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, String)> {
        let deadline = Instant::now() + timeout;
        if self.dirty {
            self.sync(deadline)?;
        }
        if let Some(l) = cmd.lines().find(|l| l.len() > MAX_LINE) {
            return Err(Error::other(format!(
                "command line of {} bytes exceeds the guest tty's limit: {:?}...",
                l.len(),
                l.chars().take(80).collect::<String>()
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        let marker = format!("@@RB-END-{id} ");
        self.log(&format!("> {cmd}\n"));
        self.conn.send(&format!(
            "{{ {cmd}\n}} </dev/null 2>&1; echo \"{marker}$?\"\n"
        ))?;
        let mut out = String::new();
        loop {
            let line = match self.conn.read_line(deadline) {
                Ok(l) => l,
                Err(e) => {
                    self.dirty = true;
                    return Err(e.context(format!(
                        "guest command {cmd:?} (output so far: {:?})",
                        tail(&out, 400)
                    )));
                }
            };
            self.log(&format!("{line}\n"));
            // Output without a final newline shares its line with the marker.
            // An echo of the command itself has `$?` after the marker, not a number.
            if let Some(pos) = line.find(&marker) {
                if let Ok(status) = line[pos + marker.len()..].trim().parse::<i32>() {
                    out.push_str(&line[..pos]);
                    return Ok((status, out));
                }
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
}
