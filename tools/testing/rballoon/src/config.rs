// SPDX-License-Identifier: GPL-2.0
//! Where things are and what the VM looks like; the one place the QEMU command line is built.

use crate::arch::Arch;
use crate::error::{Error, Result};
use serde_json::Value;
use std::env;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Locations taken from the environment.
#[derive(Clone, Debug)]
pub struct Paths {
    /// `RBALLOON_CACHE`, default `/var/cache/rballoon`.
    pub cache: PathBuf,
    /// `RBALLOON_FLAVOUR`, default `guest`.
    pub flavour: String,
    /// `RBALLOON_RUST`, default `min`: which toolchain's builds to run (`make RUST=`).
    pub rust: String,
    /// The repository root: `RBALLOON_REPO`, or three levels above this crate.
    pub repo: PathBuf,
    /// `RBALLOON_ARCH`, default x86_64: which architecture's guest to boot.
    pub arch: Arch,
}

impl Paths {
    /// Read the environment.
    pub fn from_env() -> Self {
        let cache = env::var_os("RBALLOON_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/cache/rballoon".into());
        let flavour = env::var("RBALLOON_FLAVOUR").unwrap_or_else(|_| "guest".into());
        let rust = env::var("RBALLOON_RUST").unwrap_or_else(|_| "min".into());
        let repo = env::var_os("RBALLOON_REPO")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
                p.canonicalize().unwrap_or(p)
            });
        Paths {
            cache,
            flavour,
            rust,
            repo,
            arch: Arch::from_env(),
        }
    }

    /// Whether the guest is the debug one (`kernel/configs/rballoon-debug.config`).
    pub fn is_debug(&self) -> bool {
        self.flavour == "debug"
    }

    /// A guest size, MiB, with about as much memory free on this flavour as `lean` MiB has on
    /// the lean guest: the debug kernel keeps an eighth for KASAN's shadow and more for
    /// kmemleak, lockdep and page_owner (a 512 MiB debug guest has ~300 MiB free, a lean one ~460).
    pub fn guest_mib(&self, lean: u64) -> u64 {
        if self.is_debug() {
            lean + lean / 2
        } else {
            lean
        }
    }

    /// The flavour's build directory for the architecture, under the toolchain's
    /// (scripts/rballoon/common.sh, guest-arch.sh).
    pub fn build_dir(&self) -> PathBuf {
        let builds = match self.rust.as_str() {
            "min" => "build".to_string(),
            other => format!("build-{other}"),
        };
        self.cache
            .join(builds)
            .join(format!("{}{}", self.flavour, self.arch.build_suffix()))
    }

    /// The guest kernel.
    pub fn kernel(&self) -> PathBuf {
        self.build_dir().join(self.arch.kernel_image())
    }

    /// The guest initramfs.
    pub fn initrd(&self) -> PathBuf {
        self.build_dir().join("initramfs.cpio")
    }

    /// Per-VM run directories live here.
    pub fn run_dir(&self) -> PathBuf {
        self.cache.join("run")
    }

    /// The wrapper that runs a command inside the toolchain root.
    pub fn in_root(&self) -> PathBuf {
        self.repo.join("scripts/rballoon/in-root.sh")
    }

    /// Fail with a message saying how to get them if the kernel or initramfs is missing.
    pub fn check_guest(&self) -> Result<()> {
        // The build scripts read the same variable (scripts/rballoon/guest-arch.sh).
        let (env, vars) = match self.arch {
            Arch::X86_64 => ("", "RBALLOON_CACHE/RBALLOON_FLAVOUR/RBALLOON_RUST"),
            Arch::Aarch64 => (
                "RBALLOON_ARCH=aarch64 ",
                "RBALLOON_CACHE/RBALLOON_FLAVOUR/RBALLOON_RUST/RBALLOON_ARCH",
            ),
        };
        for (what, p) in [("kernel", self.kernel()), ("initramfs", self.initrd())] {
            if !p.is_file() {
                return Err(Error::other(format!(
                    "guest {what} {} does not exist: build it first \
                     ({env}scripts/rballoon/mkkernel.sh {f} && {env}scripts/rballoon/mkinitramfs.sh {f}), \
                     or point {vars} at a build",
                    p.display(),
                    f = self.flavour
                )));
            }
        }
        if !self.in_root().is_file() {
            return Err(Error::other(format!(
                "{} does not exist (set RBALLOON_REPO)",
                self.in_root().display()
            )));
        }
        Ok(())
    }
}

/// How the virtio devices are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// virtio-pci on the `pc` machine (`virt`'s PCIe on aarch64).
    Pci,
    /// virtio-mmio on `microvm` (devices announced on the kernel command line by QEMU; `virt`'s
    /// virtio-mmio slots on aarch64).
    Mmio,
}

impl Transport {
    /// Both transports, for tests that run on each.
    pub const ALL: [Transport; 2] = [Transport::Pci, Transport::Mmio];

    /// The QEMU device-name suffix: `virtio-balloon-pci` / `virtio-balloon-device`.
    fn suffix(self) -> &'static str {
        match self {
            Transport::Pci => "pci",
            Transport::Mmio => "device",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Pci => "PCI",
            Transport::Mmio => "MMIO",
        })
    }
}

/// QEMU's accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Emulation; works everywhere, slow.
    Tcg,
    /// Hardware virtualisation (in-root.sh passes /dev/kvm through only when ACCEL=kvm).
    Kvm,
}

impl Accel {
    /// `ACCEL` from the environment, default TCG.
    pub fn from_env() -> Self {
        match env::var("ACCEL").as_deref() {
            Ok("kvm") => Accel::Kvm,
            _ => Accel::Tcg,
        }
    }

    /// The name QEMU and in-root.sh use.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// The id of the hot-plug capable PCI bridge of [`VmConfig::hotplug`].
pub const HOTPLUG_BRIDGE: &str = "rbbridge";

/// Properties of the virtio-balloon device (`id=balloon0`).
#[derive(Clone, Debug)]
pub struct BalloonProps {
    /// VIRTIO_BALLOON_F_DEFLATE_ON_OOM.
    pub deflate_on_oom: bool,
    /// VIRTIO_BALLOON_F_REPORTING.
    pub free_page_reporting: bool,
    /// VIRTIO_BALLOON_F_FREE_PAGE_HINT (QEMU then needs an iothread; one is added).
    pub free_page_hint: bool,
    /// VIRTIO_BALLOON_F_PAGE_POISON; `None` keeps QEMU's default (on).
    pub page_poison: Option<bool>,
    /// Further `key=value` device properties.
    pub extra: Vec<String>,
}

impl Default for BalloonProps {
    fn default() -> Self {
        BalloonProps {
            deflate_on_oom: true,
            free_page_reporting: true,
            free_page_hint: false,
            page_poison: None,
            extra: Vec::new(),
        }
    }
}

/// Where the guest's serial console (the kernel log) goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serial {
    /// `<rundir>/serial.log`, scanned for splats.
    File,
    /// The terminal, multiplexed with the HMP monitor (Ctrl-a c), for interactive use.
    Stdio,
}

/// Everything that defines one VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Short name; the run directory is `$CACHE/run/<name>-<pid>-<n>/`.
    pub name: String,
    /// PCI or MMIO.
    pub transport: Transport,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub smp: u32,
    /// The balloon device, or `None` for a VM without one.
    pub balloon: Option<BalloonProps>,
    /// PCI only: the balloon sits on a PCI bridge with a standard hot-plug controller (SHPC), so
    /// that QMP `device_del` and `device_add` can take it away and bring it back (see
    /// [`VmConfig::balloon_device`]). The `pc` machine's own hot-plug goes through ACPI, which
    /// the lean guest does not have.
    pub hotplug: bool,
    /// Appended to the kernel command line.
    pub append: String,
    /// Appended to QEMU's arguments.
    pub extra_args: Vec<String>,
    /// TCG or KVM.
    pub accel: Accel,
    /// Serial console destination.
    pub serial: Serial,
    /// Bound on boot until the guest shell answers.
    pub boot_timeout: Duration,
    /// Default bound on each guest command.
    pub cmd_timeout: Duration,
    /// Kernel, initramfs, repository.
    pub paths: Paths,
}

impl VmConfig {
    /// Defaults from the environment: PCI, 2048 MiB, 2 vCPUs, a balloon with deflate-on-oom and
    /// free page reporting. `RBALLOON_BOOT_TIMEOUT` (seconds) overrides the boot bound.
    pub fn new(name: &str) -> Self {
        let accel = Accel::from_env();
        let boot = env::var("RBALLOON_BOOT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(match accel {
                Accel::Tcg => 60,
                Accel::Kvm => 30,
            });
        VmConfig {
            name: name.into(),
            transport: Transport::Pci,
            mem_mib: 2048,
            smp: 2,
            balloon: Some(BalloonProps::default()),
            hotplug: false,
            append: String::new(),
            extra_args: Vec::new(),
            accel,
            serial: Serial::File,
            boot_timeout: Duration::from_secs(boot),
            cmd_timeout: Duration::from_secs(60),
            paths: Paths::from_env(),
        }
    }

    /// Builder: transport.
    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = t;
        self
    }

    /// Builder: memory size.
    pub fn mem_mib(mut self, m: u64) -> Self {
        self.mem_mib = m;
        self
    }

    /// Make the guest keep the host's time, also across a stall of QEMU ([`Vm::stall_host`]).
    ///
    /// Under TCG the lean guest has nothing to calibrate its TSC against (no HPET or PM timer
    /// without ACPI): it marks the TSC unstable and keeps time by counting timer ticks, and the
    /// ticks QEMU misses while it is stopped are lost, so a stall of any length looks to the
    /// guest like none. Told the TSC's rate (TCG's TSC counts at the host's), it keeps time by
    /// the TSC; `tsc=reliable` keeps the clocksource watchdog, which has only jiffies to compare
    /// it with, from throwing it out after a stall. A guest on KVM keeps the host's time anyway
    /// (kvm-clock), and so sees any stall of its VMM.
    ///
    /// The TSC options are x86's: an aarch64 guest is left as it is. It keeps time by the generic
    /// timer, which QEMU drives from its virtual clock; how that guest sees a stall has not been
    /// measured (`tests/host_stall.rs` is not part of its smoke test).
    ///
    /// [`Vm::stall_host`]: crate::Vm::stall_host
    pub fn follow_host_clock(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if self.paths.arch == Arch::X86_64 {
            self.append_arg(&format!("tsc_early_khz={} tsc=reliable", host_tsc_khz()));
        }
    }

    /// Add `arg` to the kernel command line.
    pub fn append_arg(&mut self, arg: &str) {
        if !self.append.is_empty() {
            self.append.push(' ');
        }
        self.append.push_str(arg);
    }

    /// Guest memory in bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib << 20
    }

    /// The balloon's `-device` argument (`driver,id=balloon0,key=value,...`); `device_add` takes
    /// the same properties.
    pub fn balloon_device(&self) -> Option<String> {
        let b = self.balloon.as_ref()?;
        let onoff = |v: bool| if v { "on" } else { "off" };
        let mut dev = format!(
            "virtio-balloon-{},id=balloon0,deflate-on-oom={},free-page-reporting={},free-page-hint={}",
            self.transport.suffix(),
            onoff(b.deflate_on_oom),
            onoff(b.free_page_reporting),
            onoff(b.free_page_hint)
        );
        if let Some(p) = b.page_poison {
            dev.push_str(&format!(",page-poison={}", onoff(p)));
        }
        if b.free_page_hint {
            dev.push_str(",iothread=rbiothread");
        }
        if self.on_hotplug_bridge() {
            dev.push_str(&format!(",bus={HOTPLUG_BRIDGE},addr=0x1"));
        }
        for e in &b.extra {
            dev.push(',');
            dev.push_str(e);
        }
        Some(dev)
    }

    /// What this harness cannot build for the guest's architecture, if anything: the hot-plug
    /// bridge is set up for the `pc` machine's ACPI, which `virt` does not have.
    pub fn unsupported(&self) -> Option<String> {
        (self.hotplug && self.paths.arch != Arch::X86_64).then(|| {
            format!(
                "VM {}: the hot-plug bridge (VmConfig::hotplug) is x86_64 only, not {}",
                self.name, self.paths.arch
            )
        })
    }

    /// Whether the balloon sits on the hot-plug bridge ([`VmConfig::hotplug`], PCI only).
    fn on_hotplug_bridge(&self) -> bool {
        self.hotplug && self.transport == Transport::Pci
    }

    /// [`VmConfig::balloon_device`] as QMP `device_add` takes it: the driver, the id and the
    /// other properties, `on`/`off` as JSON booleans (QMP checks types, unlike `-device`), the
    /// rest as strings.
    pub fn balloon_device_add(&self) -> Option<(String, String, Value)> {
        let spec = self.balloon_device()?;
        let mut parts = spec.split(',');
        let driver = parts.next()?.to_owned();
        let mut id = String::new();
        let mut props = serde_json::Map::new();
        for p in parts {
            let (k, v) = p.split_once('=').unwrap_or((p, "on"));
            if k == "id" {
                id = v.to_owned();
            } else {
                let v = match v {
                    "on" => Value::Bool(true),
                    "off" => Value::Bool(false),
                    _ => Value::String(v.to_owned()),
                };
                props.insert(k.to_owned(), v);
            }
        }
        Some((driver, id, Value::Object(props)))
    }

    /// The full QEMU argument list (without the program name) for a VM whose sockets and logs are
    /// in `rundir`.
    pub fn qemu_args(&self, rundir: &Path) -> Vec<String> {
        let r = |f: &str| rundir.join(f).display().to_string();
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        let arch = self.paths.arch;
        push(&["-accel", self.accel.name(), "-cpu", arch.cpu()]);
        push(&[
            "-smp",
            &self.smp.to_string(),
            "-m",
            &self.mem_mib.to_string(),
        ]);
        push(&["-M", arch.machine(self.transport)]);
        push(&["-kernel", &self.paths.kernel().display().to_string()]);
        push(&["-initrd", &self.paths.initrd().display().to_string()]);
        let mut cmdline = format!("console={} panic=-1", arch.console());
        if !self.append.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&self.append);
        }
        push(&["-append", &cmdline]);
        push(&["-pidfile", &r("qemu.pid")]);
        match self.serial {
            Serial::File => push(&["-serial", &format!("file:{}", r("serial.log"))]),
            // `mon:stdio` with signal=off: Ctrl-C reaches the guest instead of killing QEMU.
            Serial::Stdio => push(&[
                "-chardev",
                "stdio,id=con0,mux=on,signal=off",
                "-serial",
                "chardev:con0",
                "-monitor",
                "chardev:con0",
            ]),
        }
        push(&[
            "-chardev",
            &format!("socket,id=cmd,path={},server=on,wait=off", r("cmd.sock")),
        ]);
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", r("qmp.sock")),
        ]);
        push(&[
            "-monitor",
            &format!("unix:{},server=on,wait=off", r("hmp.sock")),
        ]);
        let sfx = self.transport.suffix();
        push(&[
            "-device",
            &format!("virtio-serial-{sfx}"),
            "-device",
            "virtconsole,chardev=cmd",
        ]);
        if self.on_hotplug_bridge() {
            // SHPC instead of ACPI for the bridge's slots.
            push(&[
                "-global",
                "PIIX4_PM.acpi-pci-hotplug-with-bridge-support=off",
                "-device",
                &format!("pci-bridge,id={HOTPLUG_BRIDGE},chassis_nr=1,shpc=on"),
            ]);
        }
        if let Some(b) = &self.balloon {
            if b.free_page_hint {
                push(&["-object", "iothread,id=rbiothread"]);
            }
        }
        if let Some(dev) = self.balloon_device() {
            push(&["-device", &dev]);
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// The host's TSC rate, kHz, against its monotonic clock over 200 ms.
#[cfg(target_arch = "x86_64")]
fn host_tsc_khz() -> u64 {
    // The TSC and the clock read as close together as possible: a pair more than ~40 us apart
    // (at 2.5 GHz) was interrupted between the reads, and is read again.
    fn sample() -> (std::time::Instant, u64) {
        loop {
            // SAFETY: RDTSC has no preconditions: it only reads the time-stamp counter.
            let a = unsafe { std::arch::x86_64::_rdtsc() };
            let t = std::time::Instant::now();
            // SAFETY: as above.
            let b = unsafe { std::arch::x86_64::_rdtsc() };
            if b.wrapping_sub(a) < 100_000 {
                return (t, a + (b - a) / 2);
            }
        }
    }
    let (t0, c0) = sample();
    std::thread::sleep(Duration::from_millis(200));
    let (t1, c1) = sample();
    let ns = (t1 - t0).as_nanos().max(1);
    (u128::from(c1.wrapping_sub(c0)) * 1_000_000 / ns) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_add_takes_the_device_argument_apart() {
        let mut cfg = VmConfig::new("t");
        cfg.hotplug = true;
        let (driver, id, props) = cfg.balloon_device_add().unwrap();
        assert_eq!(
            (driver.as_str(), id.as_str()),
            ("virtio-balloon-pci", "balloon0")
        );
        assert_eq!(
            props,
            serde_json::json!({"deflate-on-oom": true, "free-page-reporting": true,
                               "free-page-hint": false, "bus": "rbbridge", "addr": "0x1"})
        );
    }

    /// The one argument after `flag` in `args`.
    fn arg_after<'a>(args: &'a [String], flag: &str) -> &'a str {
        let i = args.iter().position(|a| a == flag).expect(flag);
        &args[i + 1]
    }

    #[test]
    fn each_architecture_gets_its_machine_console_and_kernel() {
        let rundir = Path::new("/r");
        for (arch, pci, mmio, console, kernel) in [
            (
                Arch::X86_64,
                "pc",
                "microvm,acpi=off",
                "console=ttyS0 ",
                "build/guest/arch/x86/boot/bzImage",
            ),
            (
                Arch::Aarch64,
                "virt",
                "virt",
                "console=ttyAMA0 ",
                "build/guest-arm64/arch/arm64/boot/Image",
            ),
        ] {
            let mut cfg = VmConfig::new("t");
            cfg.paths.arch = arch;
            cfg.paths.cache = "/c".into();
            cfg.paths.rust = "min".into();
            cfg.paths.flavour = "guest".into();
            let args = cfg.qemu_args(rundir);
            assert_eq!(arg_after(&args, "-M"), pci, "{arch}");
            assert!(arg_after(&args, "-append").starts_with(console), "{arch}");
            assert_eq!(arg_after(&args, "-kernel"), format!("/c/{kernel}"));
            assert!(
                args.iter().any(|a| a.starts_with("virtio-balloon-pci,")),
                "{arch}"
            );
            let args = cfg.clone().transport(Transport::Mmio).qemu_args(rundir);
            assert_eq!(arg_after(&args, "-M"), mmio, "{arch}");
            assert!(
                args.iter().any(|a| a.starts_with("virtio-balloon-device,")),
                "{arch}"
            );
        }
    }

    #[test]
    fn the_hotplug_bridge_is_x86_only() {
        let mut cfg = VmConfig::new("t");
        cfg.hotplug = true;
        cfg.paths.arch = Arch::X86_64;
        assert_eq!(cfg.unsupported(), None);
        cfg.paths.arch = Arch::Aarch64;
        assert!(cfg.unsupported().is_some_and(|m| m.contains("x86_64 only")));
    }
}
