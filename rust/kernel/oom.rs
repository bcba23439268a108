// SPDX-License-Identifier: GPL-2.0

//! OOM notifiers: callbacks the OOM path runs before the OOM killer picks a victim.
//!
//! A notifier is told nothing but that memory ran out; it frees what it can (a balloon deflates)
//! and adds the number of pages it freed to the counter `out_of_memory()` passes along. If the
//! notifiers freed anything, no task is killed.
//!
//! [`Notifier`] is the registration slot: a pinned `struct notifier_block` and whether it is
//! registered. The callback runs on whatever contains the slot, which this module cannot know, so
//! registering is `unsafe`; `kernel::balloon` registers one safely for a balloon device.
//!
//! C header: [`include/linux/oom.h`](srctree/include/linux/oom.h)

use crate::{
    binding::Switch,
    bindings,
    error::to_result,
    ffi::{c_int, c_ulong, c_void},
    prelude::*,
    types::Opaque,
};

/// The C type of an OOM notifier callback: the notifier block, an unused action, and a pointer to
/// the `unsigned long` count of freed pages to add to.
pub type Callback = unsafe extern "C" fn(
    nb: *mut bindings::notifier_block,
    action: c_ulong,
    freed: *mut c_void,
) -> c_int;

/// One OOM notifier, registered or not.
///
/// Dropping it unregisters it, waiting for a callback in progress; that may sleep.
///
/// # Invariants
///
/// `nb` is registered on the OOM notifier chain exactly when `switch` is on, or while it is
/// changing during (un)registration.
#[pin_data(PinnedDrop)]
pub struct Notifier {
    #[pin]
    nb: Opaque<bindings::notifier_block>,
    switch: Switch,
}

// SAFETY: The notifier block is only written while the switch excludes everyone else, and the
// notifier chain serialises its own use of it.
unsafe impl Send for Notifier {}
// SAFETY: See `Send`.
unsafe impl Sync for Notifier {}

impl Notifier {
    /// An unregistered notifier.
    pub fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            nb: Opaque::uninit(),
            switch: Switch::new(),
        })
    }

    /// Registers `call` with `priority` (notifiers run by decreasing priority; the C virtio
    /// balloon uses 80), once `allowed()` agrees.
    ///
    /// `allowed` runs after the slot is claimed and before anything is registered, so that an
    /// owner that ends (see [`Notifier::settle`]) either sees the registration or is seen by it.
    /// [`EBUSY`] if registered already or being (un)registered, [`ENODEV`] if `allowed` says no.
    ///
    /// # Safety
    ///
    /// `call` must be sound to call with this notifier's block (see [`Notifier::from_raw`]) for
    /// as long as it is registered, and the notifier must stay pinned until it is unregistered
    /// (its drop does that; a notifier that may be leaked must be unregistered by whoever ends
    /// the data `call` uses).
    pub unsafe fn register(
        &self,
        call: Callback,
        priority: i32,
        allowed: impl FnOnce() -> bool,
    ) -> Result {
        if !self.switch.claim_off() {
            return Err(EBUSY);
        }
        if !allowed() {
            self.switch.settle(false);
            return Err(ENODEV);
        }
        let nb = self.nb.get();
        // SAFETY: Not registered (the claimed switch excludes everyone else), so nothing else
        // reads the block; it is valid for writes.
        unsafe {
            nb.write(bindings::notifier_block {
                notifier_call: Some(call),
                next: core::ptr::null_mut(),
                priority,
            })
        };
        // SAFETY: `nb` is an initialised notifier block that stays pinned until it is
        // unregistered (safety requirements); `call` may run on it meanwhile.
        let ret = to_result(unsafe { bindings::register_oom_notifier(nb) });
        // INVARIANT: registered exactly on success.
        self.switch.settle(ret.is_ok());
        ret
    }

    /// Unregisters the notifier, waiting for a callback in progress. May sleep.
    ///
    /// Does nothing if it is not registered.
    pub fn unregister(&self) {
        if !self.switch.claim_on() {
            return;
        }
        // SAFETY: The switch was on, so `nb` is registered (type invariant). Unregistering
        // waits for the callbacks in progress.
        unsafe { bindings::unregister_oom_notifier(self.nb.get()) };
        // INVARIANT: no longer registered.
        self.switch.settle(false);
    }

    /// The notifier block, as the OOM path passes it to the callback.
    pub fn as_raw(&self) -> *mut bindings::notifier_block {
        self.nb.get()
    }

    /// Whether the notifier is registered (and no (un)registration is in progress).
    pub fn is_registered(&self) -> bool {
        self.switch.is_on()
    }

    /// Waits until a (un)registration in progress is over. May sleep.
    pub fn settle(&self) {
        self.switch.wait_settled();
    }

    /// The notifier whose block `nb` is, as a callback gets it.
    ///
    /// # Safety
    ///
    /// `nb` must be the block of a `Notifier` that stays alive for `'a`.
    pub unsafe fn from_raw<'a>(nb: *mut bindings::notifier_block) -> &'a Self {
        let nb = Opaque::cast_from(nb).cast_mut();
        // SAFETY: Per the safety requirements `nb` is the `nb` field of a live `Notifier`.
        unsafe { &*crate::container_of!(nb, Self, nb) }
    }
}

/// Adds `pages` to the count of freed pages an OOM notifier callback is given.
///
/// # Safety
///
/// `freed` must be the counter the OOM path passed to the running callback.
pub unsafe fn add_freed(freed: *mut c_void, pages: usize) {
    // SAFETY: `freed` is the `unsigned long` counter of `out_of_memory()` (safety requirements);
    // OOM notifiers are called one at a time, under the notifier chain's lock.
    unsafe { *freed.cast::<c_ulong>() += pages as c_ulong };
}

#[pinned_drop]
impl PinnedDrop for Notifier {
    fn drop(self: Pin<&mut Self>) {
        self.settle();
        self.unregister();
    }
}
