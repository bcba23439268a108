// SPDX-License-Identifier: GPL-2.0
//! The two balloon drivers under test.

use crate::config::Paths;
use crate::error::{Error, Result};
use std::fmt;
use std::fs;

/// A guest balloon driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// drivers/virtio/virtio_balloon.c, the baseline.
    C,
    /// drivers/virtio/rballoon/, the Rust driver.
    Rust,
}

impl Driver {
    /// Both drivers, for tests that run on each.
    pub const ALL: [Driver; 2] = [Driver::C, Driver::Rust];

    /// The module name (`modprobe` argument).
    pub fn module(self) -> &'static str {
        match self {
            Driver::C => "virtio_balloon",
            Driver::Rust => "rballoon",
        }
    }

    /// The driver's name under /sys/bus/virtio/drivers/.
    pub fn sysfs_name(self) -> &'static str {
        self.module()
    }

    /// Parse `c`, `rust` (or the module names).
    pub fn parse(s: &str) -> Option<Driver> {
        match s {
            "c" | "C" | "virtio_balloon" => Some(Driver::C),
            "rust" | "Rust" | "rballoon" => Some(Driver::Rust),
            _ => None,
        }
    }

    /// Check on the host that the build installed this driver's module, so a test of a driver
    /// that was not built fails at once and says why.
    pub fn require_built(self, paths: &Paths) -> Result<()> {
        let mods = paths.build_dir().join("modules-install/lib/modules");
        let want = format!("/{}.ko", self.module());
        let entries = fs::read_dir(&mods).map_err(|e| {
            Error::other(format!("no installed modules in {}: {e}", mods.display()))
        })?;
        for e in entries.flatten() {
            let dep = e.path().join("modules.dep");
            if let Ok(s) = fs::read_to_string(&dep) {
                if s.lines()
                    .any(|l| l.split(':').next().is_some_and(|m| m.ends_with(&want)))
                {
                    return Ok(());
                }
            }
        }
        Err(Error::other(format!(
            "module {}.ko ({self} driver) is not in the {} build's modules.dep under {}: build the guest \
             kernel with {} and rebuild the initramfs",
            self.module(),
            paths.flavour,
            mods.display(),
            match self {
                Driver::C => "CONFIG_VIRTIO_BALLOON=m",
                Driver::Rust => "CONFIG_VIRTIO_BALLOON_RUST=m",
            }
        )))
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::C => "C",
            Driver::Rust => "Rust",
        })
    }
}
