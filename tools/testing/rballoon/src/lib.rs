// SPDX-License-Identifier: GPL-2.0
//! Host-side test harness for rballoon: boots the guest kernel in QEMU (inside the toolchain root),
//! drives the guest shell over a virtio console, and controls the balloon over QMP and HMP.
//!
//! ```no_run
//! use rballoon_harness::{Driver, Transport, Vm, VmConfig};
//! use std::time::Duration;
//!
//! let mut vm = Vm::boot(VmConfig::new("example").transport(Transport::Pci).mem_mib(1024))?;
//! vm.load_driver(Driver::C)?;
//! vm.qmp().balloon(512 << 20)?;
//! vm.wait_balloon_actual(512 << 20, Duration::from_secs(60))?;
//! assert_eq!(vm.meminfo_kb("Balloon")?, 512 * 1024);
//! vm.shutdown()?;
//! # Ok::<(), rballoon_harness::Error>(())
//! ```

pub mod arch;
pub mod bench;
pub mod bench_plot;
pub mod bench_report;
pub mod bench_workloads;
pub mod config;
pub mod conn;
pub mod console;
pub mod driver;
pub mod error;
pub mod guestmem;
pub mod hmp;
pub mod hostcpu;
pub mod hostmem;
pub mod parity;
pub mod qmp;
pub mod scenario;
pub mod splat;
pub mod vm;

pub use arch::Arch;
pub use config::{Accel, BalloonProps, Paths, Serial, Transport, VmConfig};
pub use driver::Driver;
pub use error::{Context, Error, ErrorKind, Result};
pub use vm::{QemuProcess, Vm};
