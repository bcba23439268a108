// SPDX-License-Identifier: GPL-2.0

//! Stopping a device: the one place that resets it.
//!
//! A device that is reset no longer touches the buffers in its queues, so the driver may take
//! them back and free them. The abstraction resets a device when a queue is dropped, when a lent
//! buffer must be taken back from a device that keeps it, on removal and on shutdown; each time
//! it does the same thing, in the order `virtio_device_shutdown()` does: the queues are marked
//! broken (`virtio_break_device()`), so that nothing kicks a device that is being reset and no
//! callback runs on it, the callbacks already running are waited for, and the device is reset.
//!
//! Whether the device was stopped is recorded here rather than read back from the device: the
//! status register is the host's to report, and a host that claims to be reset while it still
//! holds buffers would otherwise get memory the driver has freed.

use crate::{
    bindings,
    sync::atomic::{Atomic, Full, Release},
    task::might_sleep,
};

/// Whether a device has been stopped since its queues were created.
///
/// Shared by the device's state and every queue set made for it.
///
/// # Invariants
///
/// `vdev` is valid for as long as this exists.
pub(super) struct DeviceStop {
    vdev: *mut bindings::virtio_device,
    stopped: Atomic<bool>,
}

// SAFETY: The device pointer is only used to stop the device, which the transports allow from
// any thread in process context.
unsafe impl Send for DeviceStop {}
// SAFETY: The flag is atomic; see `Send` for the device.
unsafe impl Sync for DeviceStop {}

impl DeviceStop {
    /// The stop record of `vdev`, whose queues are about to be created.
    ///
    /// The caller guarantees the type invariant: `vdev` outlives the value.
    pub(super) fn new(vdev: *mut bindings::virtio_device) -> Self {
        Self {
            vdev,
            stopped: Atomic::new(false),
        }
    }

    /// Breaks, synchronises and resets `vdev`.
    ///
    /// Sleeps. In atomic context, which includes the device's own queue callbacks, it would wait
    /// for itself: `might_sleep()` reports such a call on kernels that check.
    ///
    /// # Safety
    ///
    /// `vdev` must be valid and bound.
    pub(super) unsafe fn stop_now(vdev: *mut bindings::virtio_device) {
        might_sleep();
        // SAFETY: `vdev` is valid (safety requirements). Breaking first keeps kicks away from a
        // device being reset; the synchronisation waits for callbacks that saw it unbroken.
        unsafe {
            bindings::virtio_break_device(vdev);
            bindings::virtio_synchronize_cbs(vdev);
            bindings::virtio_reset_device(vdev);
        }
    }

    /// Stops the device, unless that was done since its queues were created.
    ///
    /// Sleeps, as [`DeviceStop::stop_now`]; annotated even when there is nothing left to do, so
    /// that a call from atomic context is reported on the first run, not only on the one that
    /// hangs.
    pub(super) fn stop(&self) {
        might_sleep();
        if !self.stopped.xchg(true, Full) {
            // SAFETY: By the type invariants `vdev` is valid; it is bound while its queues
            // exist, which is when this is called.
            unsafe { Self::stop_now(self.vdev) };
        }
    }

    /// Deletes the queues of `vdev` with the mandatory transport operation (`del_vqs`), which
    /// also frees their interrupts: process context, not one of the device's queue callbacks.
    ///
    /// # Safety
    ///
    /// `vdev` must be valid and stopped, and nothing may use its queues any more.
    pub(super) unsafe fn delete_queues(vdev: *mut bindings::virtio_device) {
        // SAFETY: `vdev` is valid (safety requirements), so are its transport operations.
        if let Some(del_vqs) = unsafe { (*(*vdev).config).del_vqs } {
            // SAFETY: Stopped and unused per the safety requirements.
            unsafe { del_vqs(vdev) };
        }
    }

    /// Records that the device was stopped by other means (removal, shutdown).
    pub(super) fn mark_stopped(&self) {
        self.stopped.store(true, Release);
    }

    /// New queues are about to be created: the device is set up anew.
    pub(super) fn rearm(&self) {
        self.stopped.store(false, Release);
    }
}
