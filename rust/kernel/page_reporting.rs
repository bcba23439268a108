// SPDX-License-Identifier: GPL-2.0

//! Free page reporting: telling a host which free pages it may reclaim.
//!
//! The page allocator takes batches of free page blocks off its free lists, lends them to the
//! one registered reporting device as a scatterlist ([`ReportedPages`]), and marks them reported
//! once the device's callback returns; a device that reports them to a host (the virtio balloon)
//! returns only when the host is done with them.
//!
//! [`Device`] is the registration slot: a pinned `struct page_reporting_dev_info` and whether it
//! is registered. The callback runs on whatever contains the slot, which this module cannot know,
//! so registering is `unsafe`; `kernel::balloon` registers one safely for a balloon device.
//! Without `CONFIG_PAGE_REPORTING` registering fails with [`EOPNOTSUPP`].
//!
//! C header: [`include/linux/page_reporting.h`](srctree/include/linux/page_reporting.h)

use crate::{
    binding::Switch,
    bindings,
    error::to_result,
    ffi::{c_int, c_uint},
    prelude::*,
    types::Opaque,
};
use core::{marker::PhantomData, ptr::NonNull};

/// The C type of a page reporting callback: the device, the scatterlist of free page blocks and
/// its length.
pub type Callback = unsafe extern "C" fn(
    prdev: *mut bindings::page_reporting_dev_info,
    sg: *mut bindings::scatterlist,
    nents: c_uint,
) -> c_int;

/// Free page blocks the page allocator lends to a driver to report to the host.
///
/// # Invariants
///
/// For `'a`, `sg` points to an array of `nents` initialised scatterlist entries, each describing
/// a block of free pages that page reporting took out of the free lists and gives back once the
/// report callback returns; the last entry is marked as the end of the list.
pub struct ReportedPages<'a> {
    sg: NonNull<bindings::scatterlist>,
    nents: u32,
    _p: PhantomData<&'a bindings::scatterlist>,
}

impl ReportedPages<'_> {
    /// The blocks a report callback was given.
    ///
    /// # Safety
    ///
    /// `sg` and `nents` must be what page reporting passed to the running callback, which the
    /// returned value must not outlive.
    pub unsafe fn from_raw(sg: NonNull<bindings::scatterlist>, nents: c_uint) -> Self {
        // INVARIANT: Per the safety requirements, for the duration of the call.
        Self {
            sg,
            nents,
            _p: PhantomData,
        }
    }

    /// Number of free page blocks (scatterlist entries).
    pub fn len(&self) -> usize {
        self.nents as usize
    }

    /// Whether there is no block to report (page reporting never asks for that).
    pub fn is_empty(&self) -> bool {
        self.nents == 0
    }

    /// The page frame number and length in bytes of block `index`.
    pub fn get(&self, index: usize) -> Option<(usize, usize)> {
        if index >= self.len() {
            return None;
        }
        // SAFETY: `index < nents`, so the entry is in the array (type invariant).
        let sg = unsafe { self.sg.as_ptr().add(index) };
        // SAFETY: `sg` is an initialised entry describing a block of pages (type invariant).
        let pfn = unsafe { bindings::page_reporting_sg_pfn(sg) };
        // SAFETY: As above; the length is plain data.
        let len = unsafe { (*sg).length } as usize;
        Some((pfn as usize, len))
    }

    /// The scatterlist, with [`ReportedPages::len`] entries, as virtqueues take it.
    ///
    /// The memory it describes may be handed to the device (the host may discard its contents:
    /// the pages are free), but only until the report callback returns: the callback waits for
    /// the device to be done with it.
    pub fn as_raw(&self) -> *mut bindings::scatterlist {
        self.sg.as_ptr()
    }
}

/// A page reporting device, registered or not.
///
/// The kernel reports to one device at a time. Dropping it unregisters it, waiting for a report
/// in progress; that may sleep.
///
/// # Invariants
///
/// `prdev` is registered with page reporting exactly when `switch` is on, or while it is
/// changing during (un)registration.
#[pin_data(PinnedDrop)]
pub struct Device {
    #[pin]
    prdev: Opaque<bindings::page_reporting_dev_info>,
    switch: Switch,
}

// SAFETY: The device structure is only written while the switch excludes everyone else; page
// reporting serialises its own use of it.
unsafe impl Send for Device {}
// SAFETY: See `Send`.
unsafe impl Sync for Device {}

impl Device {
    /// An unregistered device.
    pub fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            prdev: Opaque::zeroed(),
            switch: Switch::new(),
        })
    }

    /// Starts reporting to `call`, once `allowed()` agrees.
    ///
    /// `order` is the smallest free block to report (`None`: the core's default, `pageblock_order`
    /// unless set on the command line); `capacity` the most blocks per report (0 or more than 32:
    /// 32). `allowed` runs after the slot is claimed and before anything is registered, as for
    /// [`crate::oom::Notifier::register`]. [`EBUSY`] if this or another device reports already,
    /// [`ENODEV`] if `allowed` says no, [`EOPNOTSUPP`] without `CONFIG_PAGE_REPORTING`.
    ///
    /// # Safety
    ///
    /// `call` must be sound to call with this device's structure (see [`Device::from_raw`]) for
    /// as long as it is registered, and the device must stay pinned until it is unregistered (its
    /// drop does that; a device that may be leaked must be unregistered by whoever ends the data
    /// `call` uses).
    pub unsafe fn register(
        &self,
        call: Callback,
        order: Option<u32>,
        capacity: u32,
        allowed: impl FnOnce() -> bool,
    ) -> Result {
        if !self.switch.claim_off() {
            return Err(EBUSY);
        }
        if !allowed() {
            self.switch.settle(false);
            return Err(ENODEV);
        }
        let prdev = self.prdev.get();
        // SAFETY: Not registered (the claimed switch excludes everyone else), so nothing else
        // uses it. The work and state fields are (re)initialised by `page_reporting_register()`.
        unsafe {
            (*prdev).report = Some(call);
            (*prdev).order = match order {
                Some(order) => order,
                // `PAGE_REPORTING_ORDER_UNSPECIFIED` (-1) in the unsigned field, as C stores it.
                None => bindings::PAGE_REPORTING_ORDER_UNSPECIFIED as c_uint,
            };
            (*prdev).capacity = capacity;
        }
        // SAFETY: `prdev` is set up and stays pinned until it is unregistered (safety
        // requirements); `call` may run on it meanwhile.
        let ret = unsafe { raw_register(prdev) };
        // INVARIANT: registered exactly on success.
        self.switch.settle(ret.is_ok());
        ret
    }

    /// Stops reporting, waiting for a report in progress. May sleep.
    ///
    /// Does nothing if the device is not registered.
    pub fn unregister(&self) {
        if !self.switch.claim_on() {
            return;
        }
        // SAFETY: The switch was on, so `prdev` is registered (type invariant). Unregistering
        // waits for the report in progress.
        unsafe { raw_unregister(self.prdev.get()) };
        // INVARIANT: no longer registered.
        self.switch.settle(false);
    }

    /// The device structure, as page reporting passes it to the callback.
    pub fn as_raw(&self) -> *mut bindings::page_reporting_dev_info {
        self.prdev.get()
    }

    /// Whether the device is registered (and no (un)registration is in progress).
    pub fn is_registered(&self) -> bool {
        self.switch.is_on()
    }

    /// Waits until a (un)registration in progress is over. May sleep.
    pub fn settle(&self) {
        self.switch.wait_settled();
    }

    /// The device whose structure `prdev` is, as a callback gets it.
    ///
    /// # Safety
    ///
    /// `prdev` must be the structure of a `Device` that stays alive for `'a`.
    pub unsafe fn from_raw<'a>(prdev: *mut bindings::page_reporting_dev_info) -> &'a Self {
        let prdev = Opaque::cast_from(prdev).cast_mut();
        // SAFETY: Per the safety requirements `prdev` is the `prdev` field of a live `Device`.
        unsafe { &*crate::container_of!(prdev, Self, prdev) }
    }
}

#[pinned_drop]
impl PinnedDrop for Device {
    fn drop(self: Pin<&mut Self>) {
        self.settle();
        self.unregister();
    }
}

/// `page_reporting_register()`.
///
/// # Safety
///
/// `prdev` must be set up for registration and stay pinned until unregistered.
#[cfg(CONFIG_PAGE_REPORTING)]
unsafe fn raw_register(prdev: *mut bindings::page_reporting_dev_info) -> Result {
    // SAFETY: Per the safety requirements.
    to_result(unsafe { bindings::page_reporting_register(prdev) })
}

/// Without `CONFIG_PAGE_REPORTING` there is no page reporting to register with.
///
/// # Safety
///
/// None; `unsafe` to match the function it stands in for.
#[cfg(not(CONFIG_PAGE_REPORTING))]
unsafe fn raw_register(_prdev: *mut bindings::page_reporting_dev_info) -> Result {
    Err(EOPNOTSUPP)
}

/// `page_reporting_unregister()`.
///
/// # Safety
///
/// `prdev` must have been registered by [`raw_register`].
#[cfg(CONFIG_PAGE_REPORTING)]
unsafe fn raw_unregister(prdev: *mut bindings::page_reporting_dev_info) {
    // SAFETY: Per the safety requirements.
    unsafe { bindings::page_reporting_unregister(prdev) }
}

/// Without `CONFIG_PAGE_REPORTING` nothing can have been registered.
///
/// # Safety
///
/// None; `unsafe` to match the function it stands in for.
#[cfg(not(CONFIG_PAGE_REPORTING))]
unsafe fn raw_unregister(_prdev: *mut bindings::page_reporting_dev_info) {}
