// SPDX-License-Identifier: GPL-2.0
//! The guest's architecture (`RBALLOON_ARCH`): what an x86_64 guest and an aarch64 one differ in
//! on QEMU's command line and in the build they boot.
//!
//! x86_64 (the default) is what `make test` runs: `pc` for PCI, `microvm` for MMIO. aarch64 is the
//! smoke guest of `scripts/rballoon/smoke-arm64.sh`: one machine, `virt`, for both transports (its
//! PCIe host bridge, and the virtio-mmio slots it describes in the device tree), built by the same
//! scripts with `RBALLOON_ARCH=aarch64` into a build directory of its own
//! (`scripts/rballoon/guest-arch.sh`). The x86-only parts of a VM (the SHPC hot-plug bridge, the
//! TSC options of [`VmConfig::follow_host_clock`]) are not offered on aarch64.
//!
//! [`VmConfig::follow_host_clock`]: crate::VmConfig::follow_host_clock

use crate::config::Transport;
use std::env;
use std::fmt;

/// A guest architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// x86_64 on `pc` (PCI) and `microvm` (MMIO).
    X86_64,
    /// arm64 on `virt`, PCI and MMIO alike.
    Aarch64,
}

impl Arch {
    /// `RBALLOON_ARCH`, default x86_64.
    ///
    /// # Panics
    ///
    /// On any other value: booting the wrong guest's kernel would fail later and less clearly.
    pub fn from_env() -> Self {
        match env::var("RBALLOON_ARCH").as_deref() {
            Err(_) | Ok("x86_64") => Arch::X86_64,
            Ok("aarch64") => Arch::Aarch64,
            Ok(other) => panic!("RBALLOON_ARCH={other}: x86_64 or aarch64"),
        }
    }

    /// The QEMU program.
    pub fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// What the flavour's build directory name gets (as `rb_guest_dir` in guest-arch.sh).
    pub fn build_suffix(self) -> &'static str {
        match self {
            Arch::X86_64 => "",
            Arch::Aarch64 => "-arm64",
        }
    }

    /// The kernel image, relative to the build directory.
    pub fn kernel_image(self) -> &'static str {
        match self {
            Arch::X86_64 => "arch/x86/boot/bzImage",
            Arch::Aarch64 => "arch/arm64/boot/Image",
        }
    }

    /// The serial console the kernel logs to (`-serial`'s device).
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    /// `-cpu`. On aarch64, pointer authentication with QEMU's implementation-defined algorithm
    /// instead of QARMA5, which QEMU documents as much cheaper under TCG (as make matrix runs it).
    pub fn cpu(self) -> &'static str {
        match self {
            Arch::X86_64 => "max",
            Arch::Aarch64 => "max,pauth-impdef=on",
        }
    }

    /// `-M` for `transport`. The lean guests have no ACPI: on `microvm` QEMU then announces the
    /// virtio-mmio devices on the kernel command line (virtio_mmio.device=...); `virt` describes
    /// its PCIe host bridge and its virtio-mmio slots in the device tree.
    pub fn machine(self, transport: Transport) -> &'static str {
        match (self, transport) {
            (Arch::X86_64, Transport::Pci) => "pc",
            (Arch::X86_64, Transport::Mmio) => "microvm,acpi=off",
            (Arch::Aarch64, _) => "virt",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        })
    }
}
