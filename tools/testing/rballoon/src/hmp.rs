// SPDX-License-Identifier: GPL-2.0
//! The human monitor on its own socket (`hmp.sock`), as a user would type into it.

use crate::conn::Conn;
use crate::error::Result;
use std::path::Path;
use std::time::{Duration, Instant};

const PROMPT: &[u8] = b"(qemu) ";

/// An HMP session.
pub struct Hmp {
    conn: Conn,
    /// Bound on each command's output.
    pub timeout: Duration,
}

impl Hmp {
    /// Connect and consume the banner up to the first prompt.
    pub fn connect(
        path: &Path,
        deadline: Instant,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Self> {
        let mut conn = Conn::connect(path, deadline, alive)?;
        conn.read_until(
            PROMPT,
            deadline.max(Instant::now() + Duration::from_secs(10)),
        )?;
        Ok(Hmp {
            conn,
            timeout: Duration::from_secs(30),
        })
    }

    /// Run `cmd`; return its output without the echoed command line, `\r`s and terminal escapes.
    pub fn cmd(&mut self, cmd: &str) -> Result<String> {
        self.conn.send(&format!("{cmd}\n"))?;
        let raw = self
            .conn
            .read_until(PROMPT, Instant::now() + self.timeout)?;
        let text = strip_escapes(&raw).replace('\r', "");
        // The monitor's line editor echoes what was typed, then a newline, then the output.
        Ok(match text.split_once('\n') {
            Some((_, out)) => out.to_owned(),
            None => String::new(),
        })
    }
}

/// Remove ANSI CSI sequences (`ESC [ ... final`), which the monitor's line editor emits.
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if it.peek() == Some(&'[') {
            it.next();
            for c in it.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::strip_escapes;

    #[test]
    fn escapes_are_removed() {
        assert_eq!(
            strip_escapes("info balloon\x1b[K\x1b[12D\r\nballoon: actual=512"),
            "info balloon\r\nballoon: actual=512"
        );
    }
}
