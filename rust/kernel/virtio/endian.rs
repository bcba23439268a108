// SPDX-License-Identifier: GPL-2.0

//! The byte order of the values a driver and its device exchange in buffers.
//!
//! The virtio spec types them `__virtio16`, `__virtio32` and `__virtio64`: little-endian when
//! `VIRTIO_F_VERSION_1` was negotiated, and the guest's own byte order for a legacy device (the
//! spec's "legacy interface" sections; QEMU reads them with `virtio_ldl_p()` and
//! `virtio_tswap*()`). The C helpers are `cpu_to_virtio32()` and `virtio32_to_cpu()` in
//! [`include/linux/virtio_byteorder.h`](srctree/include/linux/virtio_byteorder.h). A big-endian
//! guest (s390, ppc32) that wrote them little-endian to a legacy device would name the wrong
//! pages to a balloon host.
//!
//! Configuration space fields are another matter: each device type says which byte order its
//! own fields are in, and the balloon's are little-endian even for a legacy device.
//!
//! [`Device::endian`](super::Device::endian) says which order a bound device uses; encoding
//! takes it as a value so that a driver can build its buffers (and test them) without a device.

/// The byte order of a device's `__virtio16/32/64` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endian {
    /// Little-endian: every virtio 1.0 device, and legacy devices on little-endian guests.
    Little,
    /// Big-endian: legacy devices on big-endian guests.
    Big,
}

impl Endian {
    /// The guest's own byte order: a legacy device's.
    pub const GUEST: Self = if cfg!(target_endian = "little") {
        Self::Little
    } else {
        Self::Big
    };

    /// `v` as the device reads a `__virtio16`: `cpu_to_virtio16()`.
    pub const fn u16_bytes(self, v: u16) -> [u8; 2] {
        match self {
            Self::Little => v.to_le_bytes(),
            Self::Big => v.to_be_bytes(),
        }
    }

    /// `v` as the device reads a `__virtio32`: `cpu_to_virtio32()`.
    pub const fn u32_bytes(self, v: u32) -> [u8; 4] {
        match self {
            Self::Little => v.to_le_bytes(),
            Self::Big => v.to_be_bytes(),
        }
    }

    /// `v` as the device reads a `__virtio64`: `cpu_to_virtio64()`.
    pub const fn u64_bytes(self, v: u64) -> [u8; 8] {
        match self {
            Self::Little => v.to_le_bytes(),
            Self::Big => v.to_be_bytes(),
        }
    }

    /// The value of a `__virtio16` the device wrote: `virtio16_to_cpu()`.
    pub const fn u16_from(self, b: [u8; 2]) -> u16 {
        match self {
            Self::Little => u16::from_le_bytes(b),
            Self::Big => u16::from_be_bytes(b),
        }
    }

    /// The value of a `__virtio32` the device wrote: `virtio32_to_cpu()`.
    pub const fn u32_from(self, b: [u8; 4]) -> u32 {
        match self {
            Self::Little => u32::from_le_bytes(b),
            Self::Big => u32::from_be_bytes(b),
        }
    }

    /// The value of a `__virtio64` the device wrote: `virtio64_to_cpu()`.
    pub const fn u64_from(self, b: [u8; 8]) -> u64 {
        match self {
            Self::Little => u64::from_le_bytes(b),
            Self::Big => u64::from_be_bytes(b),
        }
    }
}

#[macros::kunit_tests(rust_kernel_virtio_endian)]
mod tests {
    use super::*;

    #[test]
    fn the_guests_order_is_its_native_one() {
        let guest_is_little = Endian::GUEST == Endian::Little;
        assert_eq!(guest_is_little, cfg!(target_endian = "little"));
        // The guest's order is the one native integers have in memory.
        assert_eq!(
            Endian::GUEST.u32_bytes(0x0102_0304),
            0x0102_0304u32.to_ne_bytes()
        );
    }

    #[test]
    fn encodes_and_decodes_each_width() {
        assert_eq!(Endian::Little.u16_bytes(0x0102), [2, 1]);
        assert_eq!(Endian::Big.u16_bytes(0x0102), [1, 2]);
        assert_eq!(Endian::Little.u32_bytes(0x0102_0304), [4, 3, 2, 1]);
        assert_eq!(Endian::Big.u32_bytes(0x0102_0304), [1, 2, 3, 4]);
        assert_eq!(
            Endian::Big.u64_bytes(0x0102_0304_0506_0708),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(
            Endian::Little.u64_bytes(0x0102_0304_0506_0708),
            [8, 7, 6, 5, 4, 3, 2, 1]
        );
        for e in [Endian::Little, Endian::Big] {
            assert_eq!(e.u16_from(e.u16_bytes(0xbeef)), 0xbeef);
            assert_eq!(e.u32_from(e.u32_bytes(0xdead_beef)), 0xdead_beef);
            assert_eq!(e.u64_from(e.u64_bytes(u64::MAX - 1)), u64::MAX - 1);
        }
    }
}
