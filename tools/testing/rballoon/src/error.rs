// SPDX-License-Identifier: GPL-2.0
//! The harness's error type: a kind (so callers can tell a timeout from a dead QEMU) and a message
//! written for the person reading a failed test.

use std::fmt;

/// What went wrong, coarsely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A bounded wait ran out.
    Timeout,
    /// The other end closed the connection (QEMU exited, the guest shell died).
    Eof,
    /// A guest command exited with a non-zero status.
    Command,
    /// The kernel log contains a splat (BUG, WARNING, lockdep report, ...).
    Splat,
    /// Anything else: missing files, bad QMP replies, I/O errors, failed checks.
    Other,
}

/// A harness error.
///
/// `Debug` prints the message as is, so a test that returns `Result<(), Error>` or calls `unwrap()`
/// shows a readable failure instead of an escaped string.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    msg: String,
}

impl Error {
    /// An error of `kind` with a message.
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Error {
            kind,
            msg: msg.into(),
        }
    }

    /// An [`ErrorKind::Other`] error.
    pub fn other(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Other, msg)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.msg
    }

    /// Prefix the message with what the caller was doing, keeping the kind.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Error {
            kind: self.kind,
            msg: format!("{what}: {}", self.msg),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:?}] {}", self.kind, self.msg)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::other(format!("I/O error: {e}"))
    }
}

/// The harness's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Attach context to any error convertible into [`Error`].
pub trait Context<T> {
    /// Prefix the error with `what`.
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(what))
    }
}
