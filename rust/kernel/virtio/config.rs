// SPDX-License-Identifier: GPL-2.0

//! Typed, bounded access to a virtio device's configuration space.
//!
//! A device type's configuration is a C structure (`struct virtio_balloon_config`, ...) whose tail
//! exists only with some features negotiated: QEMU's balloon has 8 bytes without
//! `VIRTIO_BALLOON_F_FREE_PAGE_HINT` and `VIRTIO_BALLOON_F_PAGE_POISON`. Past what the device has,
//! modern virtio-pci `BUG()`s, and virtio-mmio and legacy virtio-pci read or write past their
//! mapping. So every access through a [`ConfigSpace`] is checked twice: at compile time against
//! the structure (the offset is a constant, from `offset_of!`, and must fit the structure and be
//! aligned for the value), and at run time against the length the device has with the features
//! negotiated ([`ConfigLayout::len`]).
//!
//! Byte order is decided here too, once per device type: a virtio 1.0 device's fields are
//! little-endian, a legacy device's are in the guest's byte order unless the type says otherwise
//! (the balloon's are little-endian even then: C's `virtio_cread_le()` against `virtio_cread()`).
//!
//! C header: [`include/linux/virtio_config.h`](srctree/include/linux/virtio_config.h)

use super::{Device, Endian};
use crate::{bindings, device::Bound, prelude::*};
use core::marker::PhantomData;

/// The feature bits a device negotiated: a set, read once.
///
/// Unlike the C `virtio_has_feature()`, asking for a bit the driver did not offer, or one past the
/// last feature bit, is not a bug here: the answer is `false`.
///
/// # Invariants
///
/// `bits` is a copy of the device's `features_array` taken while it was bound (after feature
/// negotiation, when the array no longer changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    bits: [u64; bindings::VIRTIO_FEATURES_U64S as usize],
}

impl Features {
    /// The features of a bound device.
    pub(super) fn of(dev: &Device<Bound>) -> Self {
        // SAFETY: By the type invariant of `Device` the device is valid; it is bound, so its
        // features were negotiated and `features_array` is only read from now on. The anonymous
        // union holds the same bits as `features` and `features_array`; the array is the whole.
        let bits = unsafe { (*dev.as_raw()).__bindgen_anon_1.features_array };
        Self { bits }
    }

    /// A set made of `bits`, for tests and for layouts that compute lengths.
    pub const fn from_bits(bits: [u64; bindings::VIRTIO_FEATURES_U64S as usize]) -> Self {
        Self { bits }
    }

    /// Whether feature `bit` is in the set (`false` for a bit past the last feature bit).
    pub const fn contains(&self, bit: u32) -> bool {
        let word = (bit / 64) as usize;
        word < self.bits.len() && self.bits[word] & (1u64 << (bit % 64)) != 0
    }
}

/// A value in a device's configuration space.
///
/// Implemented for `u8`, `u16`, `u32` and `u64`.
pub trait ConfigValue: Copy + private::Sealed {
    /// Size in bytes.
    #[doc(hidden)]
    const SIZE: usize;
    /// Decodes from bytes in `order` (the first `SIZE` of `bytes`).
    #[doc(hidden)]
    fn decode(bytes: [u8; 8], order: Endian) -> Self;
    /// Encodes as bytes in `order` (the first `SIZE` of the result).
    #[doc(hidden)]
    fn encode(self, order: Endian) -> [u8; 8];
}

mod private {
    pub trait Sealed {}
}

macro_rules! impl_config_value {
    ($($t:ty),*) => {$(
        impl private::Sealed for $t {}

        impl ConfigValue for $t {
            const SIZE: usize = core::mem::size_of::<$t>();

            fn decode(bytes: [u8; 8], order: Endian) -> Self {
                let mut b = [0u8; core::mem::size_of::<$t>()];
                b.copy_from_slice(&bytes[..Self::SIZE]);
                match order {
                    Endian::Little => <$t>::from_le_bytes(b),
                    Endian::Big => <$t>::from_be_bytes(b),
                }
            }

            fn encode(self, order: Endian) -> [u8; 8] {
                let mut out = [0u8; 8];
                let b = match order {
                    Endian::Little => self.to_le_bytes(),
                    Endian::Big => self.to_be_bytes(),
                };
                out[..Self::SIZE].copy_from_slice(&b);
                out
            }
        }
    )*};
}

impl_config_value!(u8, u16, u32, u64);

/// A virtio device type's configuration structure.
///
/// # Safety
///
/// `Self` is the device type's configuration structure as the virtio specification lays it out
/// (the `#[repr(C)]` uapi structure), and for every set of negotiated features `len` returns at
/// most the number of bytes a device that follows the specification exposes with them: accessing
/// `0..len` cannot reach past the transport's configuration window.
pub unsafe trait ConfigLayout: Sized {
    /// Whether the fields are little-endian even on a legacy device (without
    /// `VIRTIO_F_VERSION_1`); otherwise a legacy device's fields are in the guest's byte order.
    const ALWAYS_LITTLE_ENDIAN: bool;

    /// How many bytes of `Self` the device has with `features` negotiated.
    fn len(features: &Features) -> usize;
}

/// The configuration space of a bound device, typed by its layout `C`.
///
/// Made by [`Device::config`]. Every access is bounded: at compile time by the layout, at run time
/// by what the device has with its features.
/// Accesses may sleep (some transports wait for the device, as C's `virtio_cread()` says): not
/// for [`Driver::config_changed`](super::Driver::config_changed) or
/// [`Driver::vq_callback`](super::Driver::vq_callback); queue work.
///
/// # Invariants
///
/// `len <= size_of::<C>()` and `len <= C::len(features)` for the device's negotiated features;
/// `dev`'s transport has `get` and `set` configuration ops.
///
/// # Examples
///
/// ```
/// use core::mem::offset_of;
/// use kernel::{bindings, device::Bound, prelude::*, virtio};
///
/// const NUM_PAGES: usize = offset_of!(bindings::virtio_balloon_config, num_pages);
///
/// fn target(dev: &virtio::Device<Bound>) -> Result<u32> {
///     dev.config::<bindings::virtio_balloon_config>()?.read::<u32, NUM_PAGES>()
/// }
/// ```
///
/// An offset past the structure (`read::<u32, 16>()` here), or one not aligned for the value
/// (`read::<u32, 2>()`), does not compile: "configuration field outside the layout, or
/// misaligned".
pub struct ConfigSpace<'a, C: ConfigLayout> {
    dev: &'a Device<Bound>,
    len: usize,
    order: Endian,
    _layout: PhantomData<C>,
}

impl<'a, C: ConfigLayout> ConfigSpace<'a, C> {
    /// The configuration space of `dev`; [`EINVAL`] if its transport gives no access to it.
    pub(super) fn new(dev: &'a Device<Bound>) -> Result<Self> {
        let ops = dev.config_ops();
        if ops.get.is_none() || ops.set.is_none() {
            return Err(EINVAL);
        }
        let len = C::len(&Features::of(dev)).min(core::mem::size_of::<C>());
        let order = if C::ALWAYS_LITTLE_ENDIAN {
            Endian::Little
        } else {
            dev.endian()
        };
        // INVARIANT: `len` is bounded by both; `get` and `set` were checked above.
        Ok(Self {
            dev,
            len,
            order,
            _layout: PhantomData,
        })
    }

    /// How many bytes of the structure the device has with its features.
    pub fn bytes(&self) -> usize {
        self.len
    }

    /// Checks at compile time that a `V` at `OFFSET` lies inside `C` and is aligned, and at run
    /// time that the device has it; returns the offset for the transport.
    fn place<V: ConfigValue, const OFFSET: usize>(&self) -> Result<u32> {
        const {
            assert!(
                OFFSET % V::SIZE == 0 && OFFSET + V::SIZE <= core::mem::size_of::<C>(),
                "configuration field outside the layout, or misaligned"
            )
        };
        if OFFSET + V::SIZE > self.len {
            return Err(ENOENT);
        }
        u32::try_from(OFFSET).map_err(|_| EINVAL)
    }

    /// Reads the `V` at `OFFSET`, e.g. `offset_of!(virtio_balloon_config, num_pages)`.
    ///
    /// Returns [`ENOENT`] when the device does not have it with the features negotiated (as C's
    /// `virtio_cread_feature()`). 64-bit values are read again until the configuration
    /// generation is stable, as the C code does.
    pub fn read<V: ConfigValue, const OFFSET: usize>(&self) -> Result<V> {
        let offset = self.place::<V, OFFSET>()?;
        crate::task::might_sleep();
        let ops = self.dev.config_ops();
        // By the type invariant the transport has `get`.
        let get = ops.get.ok_or(EINVAL)?;
        let generation = || match ops.generation {
            // SAFETY: Transport ops are called with their own, valid, device.
            Some(g) => unsafe { g(self.dev.as_raw()) },
            None => 0,
        };
        let mut buf = [0u8; 8];
        loop {
            let before = generation();
            // SAFETY: `buf` is valid for `V::SIZE <= 8` bytes of writes. `offset + V::SIZE` is
            // within `self.len` (checked by `place`), which by the type invariant the device has
            // with its features, so the transport stays inside its configuration window. The
            // device is bound, so its transport is alive.
            unsafe {
                get(
                    self.dev.as_raw(),
                    offset,
                    buf.as_mut_ptr().cast(),
                    V::SIZE as u32,
                )
            };
            // Values up to 32 bits are read atomically by the transports.
            if V::SIZE <= 4 || generation() == before {
                break;
            }
        }
        Ok(V::decode(buf, self.order))
    }

    /// Writes `value` as the `V` at `OFFSET`.
    ///
    /// Returns [`ENOENT`] when the device does not have it with the features negotiated.
    pub fn write<V: ConfigValue, const OFFSET: usize>(&self, value: V) -> Result {
        let offset = self.place::<V, OFFSET>()?;
        crate::task::might_sleep();
        // By the type invariant the transport has `set`.
        let set = self.dev.config_ops().set.ok_or(EINVAL)?;
        let buf = value.encode(self.order);
        // SAFETY: `buf` is valid for `V::SIZE <= 8` bytes of reads; the access is inside what the
        // device has, as in `read`; the device is bound, so its transport is alive.
        unsafe {
            set(
                self.dev.as_raw(),
                offset,
                buf.as_ptr().cast(),
                V::SIZE as u32,
            )
        };
        Ok(())
    }
}

// SAFETY: `struct virtio_balloon_config` is the balloon's configuration as the specification
// (5.5.4) lays it out: `num_pages` and `actual` always, `free_page_hint_cmd_id` (bytes 8-11) only
// with VIRTIO_BALLOON_F_FREE_PAGE_HINT, `poison_val` (12-15) only with
// VIRTIO_BALLOON_F_PAGE_POISON; a device with the later field has the earlier bytes too (QEMU's
// `virtio_balloon_config_size()` is exactly this). Its fields are little-endian on every device
// (the spec's legacy interface section; C reads them with `virtio_cread_le()`).
unsafe impl ConfigLayout for bindings::virtio_balloon_config {
    const ALWAYS_LITTLE_ENDIAN: bool = true;

    fn len(features: &Features) -> usize {
        if features.contains(bindings::VIRTIO_BALLOON_F_PAGE_POISON) {
            core::mem::offset_of!(Self, poison_val) + 4
        } else if features.contains(bindings::VIRTIO_BALLOON_F_FREE_PAGE_HINT) {
            core::mem::offset_of!(Self, poison_val)
        } else {
            core::mem::offset_of!(Self, __bindgen_anon_1)
        }
    }
}

#[macros::kunit_tests(rust_kernel_virtio_config)]
mod tests {
    use super::*;

    #[test]
    fn values_are_encoded_in_the_order_asked_for() {
        assert_eq!(0x1234u16.encode(Endian::Little)[..2], [0x34, 0x12]);
        assert_eq!(0x1234u16.encode(Endian::Big)[..2], [0x12, 0x34]);
        assert_eq!(
            0x1234_5678u32.encode(Endian::Little)[..4],
            [0x78, 0x56, 0x34, 0x12]
        );
        assert_eq!(
            0x1234_5678u32.encode(Endian::Big)[..4],
            [0x12, 0x34, 0x56, 0x78]
        );
        let v = 0x0102_0304_0506_0708u64;
        assert_eq!(u64::decode(v.encode(Endian::Little), Endian::Little), v);
        assert_eq!(u64::decode(v.encode(Endian::Big), Endian::Big), v);
        assert_eq!(u8::decode([0xab, 1, 2, 3, 4, 5, 6, 7], Endian::Big), 0xab);
        assert_eq!(
            u32::decode([1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff], Endian::Little),
            1
        );
        assert_eq!(
            u32::decode([0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff], Endian::Big),
            1
        );
    }

    #[test]
    fn feature_sets_answer_false_past_the_last_bit() {
        let f = Features::from_bits([1 << 3, 1 << 1]);
        assert!(f.contains(3) && f.contains(65));
        assert!(!f.contains(4) && !f.contains(64));
        assert!(!f.contains(128) && !f.contains(u32::MAX));
    }

    #[test]
    fn the_balloon_config_is_as_long_as_its_features_make_it() {
        type Cfg = bindings::virtio_balloon_config;
        let with = |bits: &[u32]| {
            let mut words = [0u64; bindings::VIRTIO_FEATURES_U64S as usize];
            for &b in bits {
                words[(b / 64) as usize] |= 1 << (b % 64);
            }
            Cfg::len(&Features::from_bits(words))
        };
        // QEMU's virtio_balloon_config_size(): 8, 12 with hinting, 16 with page poison.
        assert_eq!(with(&[]), 8);
        assert_eq!(with(&[bindings::VIRTIO_BALLOON_F_STATS_VQ]), 8);
        assert_eq!(with(&[bindings::VIRTIO_BALLOON_F_FREE_PAGE_HINT]), 12);
        assert_eq!(with(&[bindings::VIRTIO_BALLOON_F_PAGE_POISON]), 16);
        assert_eq!(core::mem::size_of::<Cfg>(), 16);
    }

    /// A made-up device with just what `ConfigSpace` and `Device::has_feature` look at: a
    /// transport whose `get`/`set` serve `cfg` and record how far they were asked to go, the
    /// negotiated features, and a bound driver with a feature table.
    #[repr(C)]
    struct FakeDevice {
        vdev: bindings::virtio_device,
        drv: bindings::virtio_driver,
        ops: bindings::virtio_config_ops,
        cfg: [u8; 16],
        /// One past the furthest byte the transport was asked for.
        reached: usize,
    }

    // SAFETY: Every field is an integer, a pointer, an optional function pointer or made of them.
    unsafe impl Zeroable for FakeDevice {}

    /// The driver's feature table: the stats queue only.
    static OFFERED: [u32; 1] = [bindings::VIRTIO_BALLOON_F_STATS_VQ];

    /// The bytes of the made-up device's configuration a transport access asks for, `None` past
    /// its end; records how far it went.
    ///
    /// # Safety
    ///
    /// `vdev` must be the `vdev` of a live `FakeDevice` that nothing else uses meanwhile.
    unsafe fn fake_window<'a>(
        vdev: *mut bindings::virtio_device,
        offset: crate::ffi::c_uint,
        len: crate::ffi::c_uint,
    ) -> Option<&'a mut [u8]> {
        // SAFETY: `vdev` is the first field of a live `FakeDevice`, which is `repr(C)`, used by
        // nothing else per the safety requirements.
        let fake = unsafe { &mut *vdev.cast::<FakeDevice>() };
        let (offset, len) = (offset as usize, len as usize);
        fake.reached = fake.reached.max(offset + len);
        fake.cfg.get_mut(offset..offset + len)
    }

    /// # Safety
    ///
    /// `vdev` must be the `vdev` of a live `FakeDevice` and `buf` valid for `len` bytes of
    /// writes.
    unsafe extern "C" fn fake_get(
        vdev: *mut bindings::virtio_device,
        offset: crate::ffi::c_uint,
        buf: *mut crate::ffi::c_void,
        len: crate::ffi::c_uint,
    ) {
        // SAFETY: Per the safety requirements.
        if let Some(bytes) = unsafe { fake_window(vdev, offset, len) } {
            // SAFETY: `buf` is valid for `len` bytes of writes per the safety requirements.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast(), bytes.len()) };
        }
    }

    /// # Safety
    ///
    /// `vdev` must be the `vdev` of a live `FakeDevice` and `buf` valid for `len` bytes of reads.
    unsafe extern "C" fn fake_set(
        vdev: *mut bindings::virtio_device,
        offset: crate::ffi::c_uint,
        buf: *const crate::ffi::c_void,
        len: crate::ffi::c_uint,
    ) {
        // SAFETY: Per the safety requirements.
        if let Some(bytes) = unsafe { fake_window(vdev, offset, len) } {
            // SAFETY: `buf` is valid for `len` bytes of reads per the safety requirements.
            unsafe { core::ptr::copy_nonoverlapping(buf.cast(), bytes.as_mut_ptr(), bytes.len()) };
        }
    }

    /// Runs `f` on a made-up balloon device that negotiated `features`, with `cfg` as its
    /// configuration space; returns what `f` returned and how far the transport was asked to go.
    fn with_fake<R>(
        features: &[u32],
        cfg: [u8; 16],
        f: impl FnOnce(&Device<Bound>) -> R,
    ) -> Result<(R, usize)> {
        let raw = KBox::into_raw(KBox::init(
            pin_init::init_zeroed::<FakeDevice>(),
            GFP_KERNEL,
        )?);
        // SAFETY: `raw` is a live allocation of ours until it is rebuilt below; nothing else
        // knows of it, and the references made here do not outlive this block.
        unsafe {
            let fake = &mut *raw;
            fake.cfg = cfg;
            fake.ops.get = Some(fake_get);
            fake.ops.set = Some(fake_set);
            fake.vdev.config = &raw const fake.ops;
            for &bit in features {
                fake.vdev.__bindgen_anon_1.features_array[(bit / 64) as usize] |= 1 << (bit % 64);
            }
            fake.drv.feature_table = OFFERED.as_ptr();
            fake.drv.feature_table_size = OFFERED.len() as u32;
            fake.vdev.dev.driver = &raw mut fake.drv.driver;
        }
        // SAFETY: `Device` is a transparent wrapper of `struct virtio_device`; the made-up device
        // is "bound" (it has a driver) for as long as `f` runs, and lives until after it.
        let dev = unsafe { &*raw.cast::<Device<Bound>>() };
        let r = f(dev);
        // SAFETY: `raw` came from `KBox::into_raw` and nothing refers to it any more.
        let fake = unsafe { KBox::from_raw(raw) };
        Ok((r, fake.reached))
    }

    type Balloon = bindings::virtio_balloon_config;
    const NUM_PAGES: usize = core::mem::offset_of!(Balloon, num_pages);
    const HINT_CMD_ID: usize = core::mem::offset_of!(Balloon, __bindgen_anon_1);
    const POISON_VAL: usize = core::mem::offset_of!(Balloon, poison_val);

    #[test]
    fn a_field_the_device_lacks_is_enoent_and_never_reaches_the_transport() -> Result {
        let mut cfg = [0u8; 16];
        cfg[..4].copy_from_slice(&7u32.to_le_bytes());
        cfg[8..12].copy_from_slice(&9u32.to_le_bytes());
        // Without FREE_PAGE_HINT and PAGE_POISON the balloon has 8 bytes: reading the hint id
        // or writing the poison value would go past the transport's window on virtio-mmio.
        let (r, reached) = with_fake(&[], cfg, |dev| {
            let c = dev.config::<Balloon>()?;
            Ok::<_, Error>((
                c.read::<u32, NUM_PAGES>()?,
                c.read::<u32, HINT_CMD_ID>(),
                c.write::<u32, POISON_VAL>(0xaa),
            ))
        })?;
        let (target, hint, poison) = r?;
        assert_eq!(target, 7);
        assert_eq!(hint, Err(ENOENT));
        assert_eq!(poison, Err(ENOENT));
        assert_eq!(reached, 4);
        // With hinting the id is there (12 bytes), the poison value still is not.
        let (r, reached) = with_fake(&[bindings::VIRTIO_BALLOON_F_FREE_PAGE_HINT], cfg, |dev| {
            let c = dev.config::<Balloon>()?;
            Ok::<_, Error>((c.read::<u32, HINT_CMD_ID>(), c.read::<u32, POISON_VAL>()))
        })?;
        let (hint, poison) = r?;
        assert_eq!(hint, Ok(9));
        assert_eq!(poison, Err(ENOENT));
        assert_eq!(reached, 12);
        Ok(())
    }

    #[test]
    fn a_feature_the_driver_never_offered_is_false_not_bug() -> Result {
        // The device negotiated a bit the driver's table lacks (the virtio core would not, but a
        // driver may well ask about one): C's `virtio_has_feature()` BUG()s on the question.
        let features = [
            bindings::VIRTIO_BALLOON_F_STATS_VQ,
            bindings::VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
        ];
        let ((stats, oom, reporting), _) = with_fake(&features, [0; 16], |dev| {
            (
                dev.has_feature(bindings::VIRTIO_BALLOON_F_STATS_VQ),
                dev.has_feature(bindings::VIRTIO_BALLOON_F_DEFLATE_ON_OOM),
                dev.has_feature(bindings::VIRTIO_BALLOON_F_REPORTING),
            )
        })?;
        assert!(stats);
        assert!(!oom);
        assert!(!reporting);
        // The set itself says what was negotiated, offered or not.
        let (set, _) = with_fake(&features, [0; 16], |dev| dev.features())?;
        assert!(set.contains(bindings::VIRTIO_BALLOON_F_DEFLATE_ON_OOM));
        Ok(())
    }
}
