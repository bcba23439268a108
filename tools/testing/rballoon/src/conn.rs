// SPDX-License-Identifier: GPL-2.0
//! A unix-socket connection read by lines or up to a marker, every read bounded by a deadline.
//!
//! `BufReader::read_line` cannot be used with socket timeouts: a timeout in the middle of a line
//! leaves the partial line in a state the caller cannot resume from. This keeps its own buffer, so a
//! timed-out read loses nothing and the next read continues where the last one stopped.

use crate::error::{Error, ErrorKind, Result};
use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// One connected unix stream socket with a pending-input buffer.
pub struct Conn {
    stream: UnixStream,
    path: PathBuf,
    buf: Vec<u8>,
    eof: bool,
}

impl Conn {
    /// Connect to `path`, retrying until `deadline` because QEMU creates its listening sockets a
    /// moment after it starts. `alive` is asked between attempts so a QEMU that died is reported at
    /// once instead of after the whole timeout.
    pub fn connect(
        path: &Path,
        deadline: Instant,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Self> {
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => {
                    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
                    return Ok(Conn {
                        stream,
                        path: path.to_owned(),
                        buf: Vec::new(),
                        eof: false,
                    });
                }
                Err(e) => {
                    alive()?;
                    if Instant::now() >= deadline {
                        return Err(Error::new(
                            ErrorKind::Timeout,
                            format!("could not connect to {}: {e}", path.display()),
                        ));
                    }
                    sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Send `s` as is.
    pub fn send(&mut self, s: &str) -> Result<()> {
        self.stream.write_all(s.as_bytes()).map_err(|e| {
            Error::new(
                ErrorKind::Eof,
                format!("write to {}: {e}", self.path.display()),
            )
        })
    }

    /// Read whatever arrives before `deadline` into the buffer. Returns Ok(false) on timeout.
    fn fill(&mut self, deadline: Instant) -> Result<bool> {
        if self.eof {
            return Err(self.eof_error());
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let wait = (deadline - now).max(Duration::from_millis(1));
        self.stream.set_read_timeout(Some(wait))?;
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                Err(self.eof_error())
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    IoKind::WouldBlock | IoKind::TimedOut | IoKind::Interrupted
                ) =>
            {
                Ok(true)
            }
            Err(e) => {
                self.eof = true;
                Err(Error::new(
                    ErrorKind::Eof,
                    format!("read from {}: {e}", self.path.display()),
                ))
            }
        }
    }

    fn eof_error(&self) -> Error {
        Error::new(
            ErrorKind::Eof,
            format!("{} closed by QEMU", self.path.display()),
        )
    }

    /// Read up to and including `marker`; return what came before it (lossy UTF-8).
    pub fn read_until(&mut self, marker: &[u8], deadline: Instant) -> Result<String> {
        let mut from = 0;
        loop {
            if let Some(pos) = find(&self.buf[from..], marker) {
                let end = from + pos;
                let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + marker.len());
                return Ok(text);
            }
            // The marker may straddle two reads: rescan only the tail that could hold its start.
            from = self.buf.len().saturating_sub(marker.len());
            if !self.fill(deadline)? {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "timed out on {} waiting for {:?}; pending input: {:?}",
                        self.path.display(),
                        String::from_utf8_lossy(marker),
                        tail(&String::from_utf8_lossy(&self.buf), 400)
                    ),
                ));
            }
        }
    }

    /// Read one line, without its `\n` and with every `\r` removed.
    pub fn read_line(&mut self, deadline: Instant) -> Result<String> {
        self.read_until(b"\n", deadline)
            .map(|l| l.replace('\r', ""))
    }

    /// Input received but not consumed yet.
    pub fn pending(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The last `max` bytes of `s`, cut at a character boundary.
pub(crate) fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = s.len() - max;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}
