// SPDX-License-Identifier: GPL-2.0
//! The guest boots, its command channel behaves, and kernel splats are caught.

use rballoon_harness::{ErrorKind, Result, Transport, Vm, VmConfig};
use std::time::Duration;

#[test]
fn guest_boots_and_answers() -> Result<()> {
    let mut vm = Vm::boot(VmConfig::new("boot").mem_mib(512))?;
    eprintln!("booted in {:.2} s", vm.boot_time().as_secs_f64());

    let release = vm.sh("uname -r")?;
    assert!(!release.trim().is_empty(), "uname -r printed nothing");
    // Status and both output streams come back, in order.
    assert_eq!(
        vm.sh_status("echo out; echo err >&2; false")?,
        (1, "out\nerr\n".to_string())
    );
    // Output without a final newline is not lost in the end marker's line.
    assert_eq!(vm.sh("printf abc")?, "abc");
    // Commands share one shell: state persists between calls.
    vm.sh("cd /proc")?;
    assert_eq!(vm.sh("pwd")?, "/proc\n");
    // A command that reads stdin gets /dev/null, not the rest of the channel.
    assert_eq!(vm.sh("cat")?, "");
    // sh() turns a non-zero status into an error that carries the output.
    let e = vm.sh("ls /nonexistent").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Command);
    assert!(e.message().contains("nonexistent"), "{e}");
    // A command that outlives its bound fails with a timeout, and the channel recovers afterwards.
    let e = vm
        .sh_timeout("sleep 3; echo late", Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert_eq!(vm.sh("echo after")?, "after\n");

    let m = vm.meminfo()?;
    let total = m["MemTotal"];
    // The debug guest gives an eighth to KASAN's shadow and more to kmemleak and lockdep.
    let least = if vm.config().paths.is_debug() {
        320
    } else {
        400
    };
    assert!(
        total > least * 1024 && total <= 512 * 1024,
        "MemTotal {total} kB for a 512 MiB guest"
    );
    assert!(
        m.contains_key("Balloon"),
        "no Balloon: in /proc/meminfo (CONFIG_MEMORY_BALLOON?)"
    );
    assert!(vm.vmstat()?.contains_key("nr_free_pages"));
    vm.shutdown()
}

#[test]
fn mmio_guest_boots_and_answers() -> Result<()> {
    let mut vm = Vm::boot(
        VmConfig::new("boot-mmio")
            .transport(Transport::Mmio)
            .mem_mib(512),
    )?;
    eprintln!("booted in {:.2} s", vm.boot_time().as_secs_f64());
    // On microvm the virtio devices (console and balloon) sit on virtio-mmio, not PCI.
    let devs = vm.sh("ls /sys/bus/platform/drivers/virtio-mmio/")?;
    assert!(
        devs.contains("virtio-mmio."),
        "no virtio-mmio devices bound: {devs:?}"
    );
    assert!(vm
        .sh_status("ls /sys/bus/pci/devices/*/ 2>/dev/null")?
        .1
        .is_empty());
    vm.shutdown()
}

#[test]
fn kernel_splat_fails_shutdown() -> Result<()> {
    let mut vm = Vm::boot(VmConfig::new("splat").mem_mib(256))?;
    let rundir = vm.rundir().to_owned();
    // A deliberate Oops + panic: the run must not pass.
    let _ = vm.sh_timeout("echo c > /proc/sysrq-trigger", Duration::from_secs(5));
    let e = vm.shutdown().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Splat, "{e}");
    assert!(e.message().contains("sysrq"), "{e}");
    // The harness keeps a failed VM's run directory; this failure was the point, so drop it.
    std::fs::remove_dir_all(rundir)?;
    Ok(())
}

#[test]
fn missing_kernel_is_a_clear_error() {
    let mut cfg = VmConfig::new("missing");
    cfg.paths.cache = "/nonexistent/rballoon-cache".into();
    let e = Vm::boot(cfg)
        .err()
        .expect("booting without a kernel succeeded");
    assert!(
        e.message().contains("does not exist") && e.message().contains("bzImage"),
        "{e}"
    );
}
