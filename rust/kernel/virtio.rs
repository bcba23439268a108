// SPDX-License-Identifier: GPL-2.0

//! Abstractions for the virtio bus.
//!
//! A virtio driver implements [`Driver`] and registers it with
//! [`module_virtio_driver!`](crate::module_virtio_driver). The bus
//! hands it a [`Device`] in its callbacks; from [`Driver::probe`] it creates its virtqueues with
//! [`Device::find_vqs`] and returns its device data, which every later callback gets back.
//!
//! The abstraction, not the driver, decides when the device goes live and when it is torn down,
//! because that is what makes the callbacks safe:
//!
//! - Virtqueue callbacks ([`Driver::vq_callback`]) and deferred work ([`Driver::work`]) only ever
//!   run while the driver data exists: the device is marked `DRIVER_OK` only once the data is
//!   stored, and on removal work is cancelled, the device reset and the callbacks synchronised
//!   before the data is dropped.
//! - Queue callbacks and work items are named by the driver's own types ([`Driver::Queue`],
//!   [`Driver::Work`], fieldless enums declared with [`virtio_ids!`](crate::virtio_ids)), never by
//!   number.
//! - The bus, not a queue, stops (resets) the device: on removal, after [`Driver::freeze`], on
//!   shutdown and when probe fails. Dropping a [`Virtqueue`] leaves the device alone; the buffers
//!   still queued stay the device's until then, and are given back and dropped when the queues
//!   are deleted (`del_vqs`), once the bus has stopped the device and the driver dropped every
//!   queue of the set. (The one exception: [`Virtqueue::lend_inbuf_sg`] stops a device that
//!   keeps lent memory past the driver's patience, since only then is the memory safe to reuse.)
//! - Only the abstraction resets the device, and always the same way: it marks the queues broken
//!   first (`virtio_break_device()`, so that nothing kicks a reset device and no callback runs
//!   on it), waits for running callbacks, then resets. Whether the device was stopped is
//!   recorded here, never read back from the device: a status the host reports proves nothing.
//!
//! # API summary
//!
//! - [`Driver`]: `Data<'bound>` (the device data, `Send + Sync`), `ID_TABLE`
//!   ([`virtio_device_table!`](crate::virtio_device_table) of [`DeviceId`]s), `FEATURES`,
//!   `FEATURES_LEGACY`, `Queue` and `Work` ([`Ids`], or [`NoIds`]); callbacks `validate`
//!   ([`FeatureNegotiation`]: `has`, `clear`, `device`), `probe`, `ready` (device live, after
//!   probe and restore), `unbind`, `config_changed` (atomic), `vq_callback(Queue)` (interrupt),
//!   `work(Work)`, `shutdown`, `freeze`, `restore`.
//! - [`Device`]: `device_id`, `vendor_id`; bound: `has_feature` (`false`, not `BUG()`, for a bit
//!   the driver never offered), `features` ([`Features`], a set), `endian` ([`Endian`]),
//!   `has_config_access`, `config::<Layout>()` ([`ConfigSpace`]: `read::<u8|u16|u32|u64,
//!   OFFSET>()`, `write`, offsets checked at compile time against a [`ConfigLayout`] and at run
//!   time against what the device has with its features),
//!   `queue_work(Work)` (freezable system workqueue; refused before `ready` and while going away),
//!   `queue_own_work(Work)` (the device's own workqueue, for long CPU-bound work);
//!   core: `find_vqs(&[VirtqueueInfo<Queue>])`, `alloc_own_workqueue(name)`.
//! - [`VirtqueueInfo`]: `new(queue, name)`, `without_callback(queue, name)`, `absent(queue)`,
//!   `new_if(bool, queue, name)`. [`Virtqueues`]: `take::<T>(queue)`, `has(queue)`.
//! - [`Virtqueue<T>`](Virtqueue), buffers are `KBox<T>`: `add_outbuf` (`T:` [`OutBuffer`]),
//!   `add_inbuf` (`T:` [`InBuffer`]), `lend_inbuf_sg` (a borrowed [`LentScatterList`], e.g. free
//!   pages to report), unsafe `add_inbuf_sg`, `get_buf -> (KBox<T>, len)`, `kick`,
//!   `kick_prepare`, `notify`, `size`, `num_free`, `index`, `disable_cb`, `enable_cb`,
//!   `is_broken`; `add_inbuf_pages` lends a [`PageBlock`] (`T:` [`PageBuffer`]),
//!   `hint_pages` tells the device where one is without lending it (devices that address
//!   guest-physical memory, `addresses_guest_memory`). The queues of a set are deleted, and the
//!   buffers still queued freed, once all are dropped and the bus stopped the device (may sleep).
//! - [`PageBlock`]: `alloc_if_free(order)` (a free block if one is at hand, never reclaiming),
//!   `order`, `pages`, `bytes`; freed on drop.
//!
//! C header: [`include/linux/virtio.h`](srctree/include/linux/virtio.h) and
//! [`include/linux/virtio_config.h`](srctree/include/linux/virtio_config.h)

use crate::{
    binding::{Binding, Teardown},
    bindings, device,
    device_id::RawDeviceId,
    driver,
    error::{from_result, to_result},
    ffi::c_void,
    new_mutex,
    prelude::*,
    sync::{
        atomic::{Acquire, Atomic, Full, Release},
        new_spinlock_irq, Arc, Mutex, SpinLockIrq,
    },
    types::Opaque,
    workqueue, ThisModule,
};
use core::{
    any::TypeId,
    marker::PhantomData,
    mem::offset_of,
    ptr::{addr_of_mut, NonNull},
};

mod config;
mod device_stop;
mod endian;
mod ids;
mod page_block;
mod virtqueue;

use self::device_stop::DeviceStop;
use self::virtqueue::VirtqueueSet;

pub use self::config::{ConfigLayout, ConfigSpace, ConfigValue, Features};
pub use self::endian::Endian;
pub use self::ids::{Ids, NoIds};
pub use self::page_block::PageBlock;
pub use self::virtqueue::{
    InBuffer, LentScatterList, OutBuffer, PageBuffer, Virtqueue, VirtqueueInfo, Virtqueues,
    MAX_CALLBACK_QUEUES,
};

/// Transport feature: descriptors may point to tables of descriptors
/// (`include/uapi/linux/virtio_ring.h`).
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;

/// Transport feature: used and available event indices suppress notifications
/// (`include/uapi/linux/virtio_ring.h`).
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Matches any vendor in a [`DeviceId`], as the C `VIRTIO_DEV_ANY_ID`.
pub const VIRTIO_DEV_ANY_ID: u32 = !0;

/// An adapter for the registration of virtio drivers.
pub struct Adapter<T: Driver>(T);

/// The private data the virtio bus abstraction stores for a bound device.
///
/// It wraps the driver's own data with the per-device state the abstraction needs for callbacks
/// and deferred work. Fields are dropped in declaration order: the driver's data (and with it the
/// virtqueues) goes first, the per-device state, which callbacks look at, last.
///
/// # Invariants
///
/// `state` is the state of the device whose driver data this is, attached to it (`priv`) by
/// `probe_callback`, and it outlives `data`; while `data` is published in `state`, callbacks reach
/// it through the published pointer.
#[doc(hidden)]
#[pin_data]
pub struct DriverData<D> {
    #[pin]
    data: D,
    state: Pin<KBox<DeviceState>>,
}

impl<D> DriverData<D> {
    fn new(
        data: impl PinInit<D, Error>,
        state: Pin<KBox<DeviceState>>,
    ) -> impl PinInit<Self, Error> {
        try_pin_init!(Self { data <- data, state })
    }
}

// SAFETY:
// - `bindings::virtio_driver` is a C type declared as `repr(C)`.
// - `DriverData<T::Data>` is the type of the driver's device private data, as stored by
//   `probe_callback`.
// - `struct virtio_driver` embeds a `struct device_driver`.
// - `DEVICE_DRIVER_OFFSET` is the correct byte offset to the embedded `struct device_driver`.
unsafe impl<T: Driver> driver::DriverLayout for Adapter<T> {
    type DriverType = bindings::virtio_driver;
    type DriverData<'bound> = DriverData<T::Data<'bound>>;
    const DEVICE_DRIVER_OFFSET: usize = offset_of!(Self::DriverType, driver);
}

// SAFETY: A call to `unregister` for a given instance of `DriverType` is guaranteed to be valid if
// a preceding call to `register` has been successful.
unsafe impl<T: Driver> driver::RegistrationOps for Adapter<T> {
    unsafe fn register(
        vdrv: &Opaque<Self::DriverType>,
        name: &'static CStr,
        module: &'static ThisModule,
    ) -> Result {
        let features_legacy = T::FEATURES_LEGACY.unwrap_or(&[]);
        let ptr = vdrv.get();

        // SAFETY: It's safe to set the fields of `struct virtio_driver` on initialization. The
        // tables are `'static`, so they outlive the registration.
        unsafe {
            (*ptr).driver.name = name.as_char_ptr();
            (*ptr).id_table = T::ID_TABLE.as_ptr();
            (*ptr).feature_table = T::FEATURES.as_ptr();
            (*ptr).feature_table_size = T::FEATURES.len().try_into()?;
            if T::FEATURES_LEGACY.is_some() {
                (*ptr).feature_table_legacy = features_legacy.as_ptr();
                (*ptr).feature_table_size_legacy = features_legacy.len().try_into()?;
            }
            (*ptr).validate = Some(Self::validate_callback);
            (*ptr).probe = Some(Self::probe_callback);
            (*ptr).remove = Some(Self::remove_callback);
            (*ptr).config_changed = Some(Self::config_changed_callback);
            (*ptr).shutdown = Some(Self::shutdown_callback);
            #[cfg(CONFIG_PM_SLEEP)]
            {
                (*ptr).freeze = Some(Self::freeze_callback);
                (*ptr).restore = Some(Self::restore_callback);
            }
        }

        // SAFETY: `ptr` is a valid `struct virtio_driver`, pinned until `unregister`.
        to_result(unsafe { bindings::__register_virtio_driver(ptr, module.as_ptr()) })
    }

    unsafe fn unregister(vdrv: &Opaque<Self::DriverType>) {
        // SAFETY: `vdrv` is guaranteed to be a valid, registered `DriverType`.
        unsafe { bindings::unregister_virtio_driver(vdrv.get()) }
    }
}

/// The type of the C virtqueue callbacks the adapter installs.
type VqCallbackFn = unsafe extern "C" fn(*mut bindings::virtqueue);

impl<T: Driver> Adapter<T> {
    /// One virtqueue callback per position in the [`VirtqueueInfo`] list, so that the driver
    /// learns which of its queues signalled without a table to look the queue up in.
    const VQ_CALLBACKS: [VqCallbackFn; MAX_CALLBACK_QUEUES] = [
        Self::vq_callback::<0>,
        Self::vq_callback::<1>,
        Self::vq_callback::<2>,
        Self::vq_callback::<3>,
        Self::vq_callback::<4>,
        Self::vq_callback::<5>,
        Self::vq_callback::<6>,
        Self::vq_callback::<7>,
        Self::vq_callback::<8>,
        Self::vq_callback::<9>,
        Self::vq_callback::<10>,
        Self::vq_callback::<11>,
        Self::vq_callback::<12>,
        Self::vq_callback::<13>,
        Self::vq_callback::<14>,
        Self::vq_callback::<15>,
    ];

    extern "C" fn validate_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: The virtio bus only calls `validate` with a valid device, during probe, with the
        // device lock held.
        //
        // `priv` may still point to the data of a driver bound before (C drivers do not clear
        // it); nothing of ours is attached yet, so make sure nothing can be found through it.
        unsafe { DeviceState::clear_priv(vdev) };

        let mut features = FeatureNegotiation {
            vdev,
            _p: PhantomData,
        };
        from_result(|| {
            T::validate(&mut features)?;
            Ok(0)
        })
    }

    extern "C" fn probe_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: The virtio bus only ever calls the probe callback with a valid pointer to a
        // `struct virtio_device`.
        //
        // INVARIANT: `vdev` is valid for the duration of `probe_callback()`.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };

        from_result(|| {
            // Attach the per-device state first: `find_vqs()` in the driver's probe installs its
            // callbacks. On any error below it is dropped, which detaches it again.
            let state = KBox::pin_init(
                DeviceState::new::<T::Queue, T::Work>(vdev, Self::VQ_CALLBACKS, Self::run_work),
                GFP_KERNEL,
            )?;

            // SAFETY: The teardown is pinned in the boxed state, which lives until after the
            // driver's data is dropped; it is run at the end of `remove_callback`, before the data
            // is dropped, or, if probe fails, by the drop of the state, before anything the
            // driver could have borrowed for the binding (the device, its queues) goes away.
            let binding = unsafe { Teardown::binding(core::ptr::from_ref(&state.teardown)) };
            let data = T::probe(dev, binding);
            dev.as_ref().set_drvdata(DriverData::new(data, state))?;

            // SAFETY: `set_drvdata()` just stored a `Pin<KBox<DriverData<T::Data<'_>>>>`.
            let dd = unsafe { dev.as_ref().drvdata_borrow::<DriverData<T::Data<'_>>>() };
            dd.state
                .publish(core::ptr::from_ref(&dd.data).cast_mut().cast());

            // Only now that callbacks can find the data may the device use its queues.
            // SAFETY: `vdev` is valid and not `DRIVER_OK` yet: the driver cannot set it itself.
            unsafe { bindings::virtio_device_ready(vdev) };

            // SAFETY: `data` is structurally pinned in the pinned `DriverData`.
            let data = unsafe { dd.map_unchecked(|d| &d.data) };
            T::ready(dev, data);
            Ok(0)
        })
    }

    extern "C" fn remove_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: The virtio bus only ever calls the remove callback with a valid pointer to a
        // `struct virtio_device`.
        //
        // INVARIANT: `vdev` is valid for the duration of `remove_callback()`.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };

        // SAFETY: `remove_callback` is only ever called after a successful call to
        // `probe_callback`, hence it's guaranteed that `Device::set_drvdata()` has been called
        // and stored a `Pin<KBox<DriverData<T::Data<'_>>>>`.
        let dd = unsafe { dev.as_ref().drvdata_borrow::<DriverData<T::Data<'_>>>() };

        // No more deferred work: the driver tears down without it racing along, like the C
        // drivers' `cancel_work_sync()` before cleaning up.
        dd.state.stop_work();

        // SAFETY: `data` is structurally pinned in the pinned `DriverData`.
        let data = unsafe { dd.map_unchecked(|d| &d.data) };
        T::unbind(dev, data);

        // The binding ends: whatever the driver registered through it and did not drop yet
        // (leaked or not) is torn down now, while its queues still work.
        dd.state.teardown.run();

        // From here on callbacks find no data; the device is stopped, and callbacks that already
        // found the data are waited for, before the data is dropped after this function.
        dd.state.unpublish();
        // Always, whatever a queue did before: the bus expects a reset device after `remove`.
        // SAFETY: `vdev` is valid and bound; `remove` runs in `Core` context.
        unsafe { DeviceStop::stop_now(vdev) };
        // The queues, dropped with the data after this function, need not stop it again (which
        // would undo the `ACKNOWLEDGE` the bus sets next), and are deleted once they are gone.
        dd.state.stop.mark_stopped();
        dd.state.release_queues();
    }

    extern "C" fn shutdown_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: The virtio bus only calls `shutdown` with a valid device that has a driver
        // bound, i.e. after a successful `probe_callback`.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };
        // SAFETY: The driver is bound, so `probe_callback` stored the driver data.
        let dd = unsafe { dev.as_ref().drvdata_borrow::<DriverData<T::Data<'_>>>() };

        dd.state.stop_work();
        // SAFETY: `data` is structurally pinned in the pinned `DriverData`.
        let data = unsafe { dd.map_unchecked(|d| &d.data) };
        T::shutdown(dev, data);

        // What the virtio core does for drivers without a `shutdown` method: break, wait for
        // the callbacks, reset.
        // SAFETY: `vdev` is valid.
        unsafe { bindings::virtio_device_shutdown(vdev) };
        dd.state.stop.mark_stopped();
    }

    extern "C" fn config_changed_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: The virtio core only reports configuration changes between the end of a
        // successful probe and the start of remove (`virtio_config_core_enable()` /
        // `_disable()`), so `priv` points to our `DeviceState`.
        let Some(state) = (unsafe { DeviceState::from_priv(vdev) }) else {
            return;
        };
        let Some(data) = state.data() else {
            return;
        };
        // SAFETY: The device is bound for as long as the data is published.
        let dev = unsafe { &*vdev.cast::<Device<device::Bound>>() };
        // SAFETY: The published pointer is the `T::Data` in the pinned `DriverData` stored by
        // `probe_callback`, and it stays valid until it is unpublished.
        let data = unsafe { Pin::new_unchecked(&*data.cast::<T::Data<'_>>()) };
        T::config_changed(dev, data);
    }

    extern "C" fn vq_callback<const N: usize>(vq: *mut bindings::virtqueue) {
        // `find_vqs` installs this only at positions the driver's `Queue` names.
        let Some(queue) = T::Queue::at(N) else {
            return;
        };
        // SAFETY: The transport calls queue callbacks with a valid queue of a valid device.
        let vdev = unsafe { (*vq).vdev };
        // SAFETY: The callback was installed by `find_vqs()` on a device with our `DeviceState`
        // attached; `priv` stays valid until the queues are deleted (`DeviceState` is dropped
        // after the driver data, which owns them).
        let Some(state) = (unsafe { DeviceState::from_priv(vdev) }) else {
            return;
        };
        let Some(data) = state.data() else {
            // Not live yet, or being torn down: nobody waits for this queue any more.
            return;
        };
        // SAFETY: The device is bound for as long as the data is published.
        let dev = unsafe { &*vdev.cast::<Device<device::Bound>>() };
        // SAFETY: The published pointer is the `T::Data` in the pinned `DriverData`; removal
        // unpublishes it and synchronises with running callbacks before dropping it.
        let data = unsafe { Pin::new_unchecked(&*data.cast::<T::Data<'_>>()) };
        T::vq_callback(dev, data, queue);
    }

    /// Runs work item `id` of the device `state` belongs to.
    ///
    /// # Safety
    ///
    /// `state` must be the `DeviceState` of a device bound to this driver.
    unsafe fn run_work(state: &DeviceState, id: usize) {
        // Work items are made one per name of the driver's `Work`.
        let Some(work) = T::Work::at(id) else {
            return;
        };
        let Some(data) = state.data() else {
            return;
        };
        // SAFETY: Work only runs between publishing and `stop_work()`, while the device is bound.
        let dev = unsafe { &*state.vdev.cast::<Device<device::Bound>>() };
        // SAFETY: The published pointer is the `T::Data` in the pinned `DriverData`, and removal
        // cancels all work before unpublishing and dropping it.
        let data = unsafe { Pin::new_unchecked(&*data.cast::<T::Data<'_>>()) };
        T::work(dev, data, work);
    }

    #[cfg(CONFIG_PM_SLEEP)]
    extern "C" fn freeze_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: The virtio core calls `freeze` with a valid device bound to this driver.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };
        // SAFETY: The driver is bound, so `probe_callback` stored the driver data.
        let dd = unsafe { dev.as_ref().drvdata_borrow::<DriverData<T::Data<'_>>>() };
        // SAFETY: `data` is structurally pinned in the pinned `DriverData`.
        let data = unsafe { dd.map_unchecked(|d| &d.data) };
        from_result(|| {
            T::freeze(dev, data)?;
            // The device is the bus's to stop; its queues go once the driver let go of them.
            dd.state.stop_queues();
            Ok(0)
        })
    }

    #[cfg(CONFIG_PM_SLEEP)]
    extern "C" fn restore_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: The virtio core calls `restore` with a valid device bound to this driver.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };
        // SAFETY: The driver is bound, so `probe_callback` stored the driver data.
        let dd = unsafe { dev.as_ref().drvdata_borrow::<DriverData<T::Data<'_>>>() };
        // SAFETY: `data` is structurally pinned in the pinned `DriverData`.
        let data = unsafe { dd.map_unchecked(|d| &d.data) };
        from_result(|| {
            T::restore(dev, data)?;
            if !dev.is_driver_ok() {
                // SAFETY: `vdev` is valid and not `DRIVER_OK`.
                unsafe { bindings::virtio_device_ready(vdev) };
            }
            T::ready(dev, data);
            Ok(0)
        })
    }
}

/// The state the abstraction keeps for a device bound to a Rust driver.
///
/// Reachable from the C side through `vdev->priv`, which the virtio core leaves to drivers.
///
/// # Invariants
///
/// - `vdev` is valid and its `priv` points to this state from [`DeviceState::new`] until it is
///   dropped.
/// - `data` is NULL or points to the driver's pinned data, which stays valid until `data` is
///   set back to NULL ([`DeviceState::unpublish`]).
/// - `works` has been initialised in place and is never resized; work items are only queued while
///   `stopped` is `false` and `data` is not NULL.
/// - `own_wq` is NULL or a workqueue allocated by [`Device::alloc_own_workqueue`], set once and
///   destroyed when the state is dropped, after all work items were cancelled.
/// - `stop` is the device's, shared with every [`Virtqueue`] set made by [`Device::find_vqs`].
/// - `queues` holds the set of the device's current queues from [`Device::find_vqs`] until the
///   device is stopped (removal, freeze, failed probe).
/// - `queue_ids` and `work_ids` are the driver's [`Driver::Queue`] and [`Driver::Work`]; `works`
///   has one item per name of `Work`, and `vq_callbacks[i]` calls the driver with the name of
///   position `i` of `Queue`.
/// - `teardown` is the driver's [`Binding`]: it is run at the end of `remove`, before the
///   driver's data is dropped and the queues deleted, or, if probe failed, when this state is
///   dropped, before leaked queues are deleted.
#[pin_data(PinnedDrop)]
struct DeviceState {
    vdev: *mut bindings::virtio_device,
    #[pin]
    teardown: Teardown,
    stop: Arc<DeviceStop>,
    #[pin]
    queues: Mutex<Option<Arc<VirtqueueSet>>>,
    queue_ids: TypeId,
    work_ids: TypeId,
    data: Atomic<*mut c_void>,
    #[pin]
    stopped: SpinLockIrq<bool>,
    works: KVec<DeviceWork>,
    own_wq: Atomic<*mut bindings::workqueue_struct>,
    vq_callbacks: [VqCallbackFn; MAX_CALLBACK_QUEUES],
    run_work: unsafe fn(&DeviceState, usize),
}

// SAFETY: The raw pointers are to the device and to driver data that is `Send + Sync`; all
// mutation goes through atomics, the lock, or the workqueue core.
unsafe impl Send for DeviceState {}
// SAFETY: See `Send`.
unsafe impl Sync for DeviceState {}

/// One deferred work item of a device.
///
/// # Invariants
///
/// - `work` is initialised with `device_work_fn` by [`DeviceState::new`], in the pinned `works`
///   of the state that owns it, and is cancelled before that state is dropped.
/// - `vdev` is the device of that state and `id` the item's index in `works`.
#[repr(C)]
struct DeviceWork {
    work: Opaque<bindings::work_struct>,
    vdev: *mut bindings::virtio_device,
    id: usize,
}

impl DeviceState {
    fn new<Q: Ids, W: Ids>(
        vdev: *mut bindings::virtio_device,
        vq_callbacks: [VqCallbackFn; MAX_CALLBACK_QUEUES],
        run_work: unsafe fn(&DeviceState, usize),
    ) -> impl PinInit<Self, Error> {
        let nr_works = W::ALL.len();
        let init = move |stop: Arc<DeviceStop>, works: KVec<DeviceWork>| {
            try_pin_init!(Self {
                vdev,
                teardown <- Teardown::new(),
                stop,
                queues <- new_mutex!(None, "virtio::DeviceState::queues"),
                queue_ids: ids::type_of::<Q>(),
                work_ids: ids::type_of::<W>(),
                data: Atomic::new(core::ptr::null_mut()),
                stopped <- new_spinlock_irq!(false, "virtio::DeviceState::stopped"),
                works,
                own_wq: Atomic::new(core::ptr::null_mut()),
                vq_callbacks,
                run_work,
            })
            .pin_chain(move |this| {
                // SAFETY: `vdev` is valid (the caller is in probe); `this` is pinned in its final
                // place, so its address may be published.
                unsafe { (*vdev).priv_ = core::ptr::from_mut(this.get_unchecked_mut()).cast() };
                Ok(())
            })
        };
        pin_init::pin_init_scope(move || {
            // INVARIANT: Made for `vdev`, and shared by the queue sets `find_vqs` makes for it.
            let stop = Arc::new(DeviceStop::new(vdev), GFP_KERNEL)?;
            let mut works = KVec::with_capacity(nr_works, GFP_KERNEL)?;
            for id in 0..nr_works {
                works.push(
                    DeviceWork {
                        work: Opaque::uninit(),
                        vdev,
                        id,
                    },
                    GFP_KERNEL,
                )?;
            }
            // The vector is full and never grows again, so the work items no longer move.
            for w in works.iter() {
                // SAFETY: `w.work` is valid for writes and stays in place until `works` is
                // dropped, after all work was cancelled.
                unsafe {
                    bindings::init_work_with_key(
                        w.work.get(),
                        Some(device_work_fn),
                        false,
                        c"virtio::DeviceWork".as_char_ptr(),
                        crate::static_lock_class!().as_ptr(),
                    )
                };
            }
            Ok(init(stop, works))
        })
    }

    /// Forgets whatever `vdev->priv` points to.
    ///
    /// # Safety
    ///
    /// `vdev` must be valid, and no Rust `DeviceState` may be attached to it.
    unsafe fn clear_priv(vdev: *mut bindings::virtio_device) {
        // SAFETY: By the safety requirements `vdev` is valid. A volatile write because callbacks
        // may read it concurrently (`READ_ONCE()`/`WRITE_ONCE()` in C).
        unsafe { addr_of_mut!((*vdev).priv_).write_volatile(core::ptr::null_mut()) };
    }

    /// The state attached to `vdev`, if any.
    ///
    /// # Safety
    ///
    /// `vdev` must be valid, and `priv` must be NULL or point to a `DeviceState` that stays
    /// valid for `'a`.
    unsafe fn from_priv<'a>(vdev: *mut bindings::virtio_device) -> Option<&'a DeviceState> {
        // SAFETY: `vdev` is valid; see `clear_priv()` for why this is volatile.
        let p = unsafe { addr_of_mut!((*vdev).priv_).read_volatile() };
        // SAFETY: By the safety requirements `p` is NULL or a valid `DeviceState` for `'a`.
        unsafe { p.cast::<DeviceState>().as_ref() }
    }

    /// Makes the driver data reachable from callbacks.
    fn publish(&self, data: *mut c_void) {
        // INVARIANT: `data` is the driver's data, pinned in its `DriverData`.
        self.data.store(data, Release);
    }

    /// Makes the driver data unreachable from callbacks that start from now on.
    fn unpublish(&self) {
        // INVARIANT: NULL.
        self.data.store(core::ptr::null_mut(), Release);
    }

    /// The published driver data, if any.
    fn data(&self) -> Option<*mut c_void> {
        let p = self.data.load(Acquire);
        (!p.is_null()).then_some(p)
    }

    /// Stops the device if it has queues, and lets go of them (freeze, failed probe). Sleeps.
    fn stop_queues(&self) {
        if self.queues.lock().is_some() {
            self.stop.stop();
            self.release_queues();
        }
    }

    /// Lets go of the device's current queues, which the bus has stopped: they are deleted as
    /// soon as the driver dropped them too.
    fn release_queues(&self) {
        let set = self.queues.lock().take();
        // Outside the lock: deleting the queues sleeps.
        drop(set);
    }

    /// Queues work item `work` (of the driver's type `W`) on the freezable system workqueue, or
    /// with `own` on the device's own workqueue (refused if it has none).
    fn queue_work<W: Ids>(&self, work: W, own: bool) -> bool {
        if self.work_ids != ids::type_of::<W>() {
            return false;
        }
        let Some(work) = self.works.get(work.position()) else {
            return false;
        };
        let queue = if own {
            let wq = self.own_wq.load(Acquire);
            if wq.is_null() {
                return false;
            }
            // SAFETY: By the type invariants a non-NULL `own_wq` stays valid until `self` is
            // dropped, which outlives this call.
            unsafe { workqueue::Queue::from_raw(wq) }
        } else {
            workqueue::system_freezable()
        };
        let stopped = self.stopped.lock();
        if *stopped || self.data().is_none() {
            return false;
        }
        // Under the lock, so that `stop_work()` cannot miss a work item queued after it looked.
        // INVARIANT: `work` belongs to `self`, which is alive.
        queue.enqueue(WorkRef(work))
    }

    /// Refuses further work and waits until none is queued or running.
    fn stop_work(&self) {
        *self.stopped.lock() = true;
        for w in self.works.iter() {
            // SAFETY: `w.work` was initialised in `new()`.
            unsafe { bindings::cancel_work_sync(w.work.get()) };
        }
    }
}

#[pinned_drop]
impl PinnedDrop for DeviceState {
    fn drop(self: Pin<&mut Self>) {
        // A failed probe ends the binding here; after `remove` this does nothing.
        self.teardown.run();
        self.stop_work();
        let wq = self.own_wq.xchg(core::ptr::null_mut(), Full);
        if !wq.is_null() {
            // SAFETY: By the type invariants `wq` is our own workqueue; nothing can queue on it
            // any more (work is stopped, the pointer is cleared) and it is destroyed once.
            unsafe { bindings::destroy_workqueue(wq) };
        }
        let vdev = self.vdev;
        // A failed probe: the bus stops the device and lets go of its queues, as on removal.
        self.stop_queues();
        // Queues whose `Virtqueue`s were leaked (`mem::forget`) would keep calling our callbacks
        // after `priv` belongs to the next driver. Nobody can use their handles any more (their
        // lifetime was that of the binding), so delete them now.
        // SAFETY: `vdev` is valid by the type invariants; the queue list only changes in
        // `find_vqs`/`del_vqs`, called by this device's driver, which is going away.
        let leaked = unsafe {
            let head = addr_of_mut!((*vdev).vqs);
            (*head).next != head
        };
        if leaked {
            // SAFETY: `vdev` is valid; stop it first so that the device lets go of the queues
            // (it was stopped on removal, but this also covers a driver that failed to probe),
            // then delete them with the mandatory transport operation.
            unsafe {
                DeviceStop::stop_now(vdev);
                DeviceStop::delete_queues(vdev);
            }
        }
        // SAFETY: `vdev` is valid by the type invariants, and this state is going away.
        unsafe { Self::clear_priv(vdev) };
    }
}

/// The workqueue function of all [`DeviceWork`] items.
extern "C" fn device_work_fn(work: *mut bindings::work_struct) {
    // SAFETY: `work` is the `work` field of a `DeviceWork` (the only users of this function),
    // which is `repr(C)` with `work` first.
    let dw = unsafe { &*work.cast::<DeviceWork>() };
    // SAFETY: A queued or running work item keeps its `DeviceState` alive: the state cancels all
    // its work before it goes away, and it is attached to `dw.vdev` all that time.
    let Some(state) = (unsafe { DeviceState::from_priv(dw.vdev) }) else {
        return;
    };
    // SAFETY: `state` belongs to a device bound to the driver that set `run_work`.
    unsafe { (state.run_work)(state, dw.id) };
}

/// A [`DeviceWork`] handed to the workqueue.
///
/// # Invariants
///
/// Points to a `DeviceWork` of a live `DeviceState`.
struct WorkRef(*const DeviceWork);

// SAFETY: Work items run on any CPU; `DeviceWork` only holds a work item and the device pointer.
unsafe impl Send for WorkRef {}

// SAFETY: The `work_struct` stays valid while it is queued or its function runs: `DeviceState`
// cancels its work items with `cancel_work_sync()` before they are freed, which takes a queued
// item off its workqueue (its function is then never called) and waits for a running one. The
// trait's documentation asks for validity "until the function pointer is called"; for an item
// cancelled while queued that never happens, and after `cancel_work_sync()` returns the workqueue
// code holds no pointer to it: that is the C contract of a work item, which this relies on.
unsafe impl workqueue::RawWorkItem<0> for WorkRef {
    type EnqueueOutput = bool;

    unsafe fn __enqueue<F>(self, queue_work_on: F) -> bool
    where
        F: FnOnce(*mut bindings::work_struct) -> bool,
    {
        // SAFETY: By the type invariants `self.0` is valid.
        queue_work_on(unsafe { (*self.0).work.get() })
    }
}

/// Declares a kernel module that exposes a single virtio driver.
///
/// # Examples
///
/// ```ignore
/// kernel::module_virtio_driver! {
///     type: MyDriver,
///     name: "Module name",
///     authors: ["Author name"],
///     description: "Description",
///     license: "GPL v2",
/// }
/// ```
#[macro_export]
macro_rules! module_virtio_driver {
    ($($f:tt)*) => {
        $crate::module_driver!(<T>, $crate::virtio::Adapter<T>, { $($f)* });
    };
}

/// Abstraction for the virtio device ID structure, `struct virtio_device_id`.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct DeviceId(bindings::virtio_device_id);

impl DeviceId {
    /// A device ID matching devices of type `device` (a `VIRTIO_ID_*`) from any vendor.
    pub const fn new(device: u32) -> Self {
        Self::with_vendor(device, VIRTIO_DEV_ANY_ID)
    }

    /// A device ID matching devices of type `device` from `vendor` only.
    pub const fn with_vendor(device: u32, vendor: u32) -> Self {
        Self(bindings::virtio_device_id { device, vendor })
    }
}

// SAFETY: `DeviceId` is a `#[repr(transparent)]` wrapper of `virtio_device_id` and does not add
// additional invariants, so it's safe to transmute to `RawType`.
unsafe impl RawDeviceId for DeviceId {
    type RawType = bindings::virtio_device_id;
}

/// The table of device IDs of a virtio driver. `struct virtio_device_id` carries no driver data.
pub type IdTable = &'static dyn kernel::device_id::IdTable<DeviceId, ()>;

/// Creates a virtio [`IdTable`] with its alias for modpost.
///
/// # Examples
///
/// ```
/// kernel::virtio_device_table!(
///     VIRTIO_TABLE,
///     [kernel::virtio::DeviceId::new(kernel::bindings::VIRTIO_ID_BALLOON)]
/// );
/// ```
#[macro_export]
macro_rules! virtio_device_table {
    ($table_name:ident, [$($id:expr),* $(,)?]) => {
        $crate::module_device_table!("virtio", $crate::virtio::DeviceId, $table_name, @none,
            [$($id),*]);
    };
}

/// The features a device offers, as the driver sees them in [`Driver::validate`].
///
/// At that point the virtio core has intersected the device's features with the driver's feature
/// table; the driver may still drop some before they are written back to the device.
///
/// # Invariants
///
/// `vdev` is valid for `'a`, being probed by a driver of this abstraction in its `validate`
/// callback, with the device lock held: nothing else changes its features meanwhile.
pub struct FeatureNegotiation<'a> {
    vdev: *mut bindings::virtio_device,
    _p: PhantomData<&'a ()>,
}

impl<'a> FeatureNegotiation<'a> {
    /// Whether feature `bit` is still negotiated.
    pub fn has(&self, bit: u32) -> bool {
        self.device().has_feature(bit)
    }

    /// Drops feature `bit`, as the C `__virtio_clear_bit()`.
    pub fn clear(&mut self, bit: u32) {
        // SAFETY: `vdev` is valid during `validate`; clearing a bit is what `validate` is for.
        unsafe { bindings::__virtio_clear_bit(self.vdev, bit) };
    }

    /// The device being probed, e.g. to read its configuration.
    pub fn device(&self) -> &'a Device<device::Bound> {
        // SAFETY: `validate` runs during probe, with a driver attached and the device lock held;
        // `vdev` is valid for `'a`.
        unsafe { &*self.vdev.cast() }
    }
}

/// The virtio driver trait.
///
/// Drivers must implement this trait in order to get a virtio driver registered.
///
/// # Examples
///
/// ```
/// use kernel::{binding::Binding, bindings, device::Core, prelude::*, virtio};
///
/// struct MyDriver;
///
/// kernel::virtio_device_table!(MY_TABLE, [virtio::DeviceId::new(bindings::VIRTIO_ID_BALLOON)]);
///
/// impl virtio::Driver for MyDriver {
///     type Data<'bound> = ();
///     type Queue = virtio::NoIds;
///     type Work = virtio::NoIds;
///     const ID_TABLE: virtio::IdTable = &MY_TABLE;
///     const FEATURES: &'static [u32] = &[bindings::VIRTIO_BALLOON_F_STATS_VQ];
///
///     fn probe<'bound>(
///         dev: &'bound virtio::Device<Core<'_>>,
///         _binding: Binding<'bound>,
///     ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
///         dev_info!(dev, "stats: {}\n", dev.has_feature(bindings::VIRTIO_BALLOON_F_STATS_VQ));
///         Ok(())
///     }
/// }
/// ```
pub trait Driver {
    /// The type of the driver's bus device private data.
    ///
    /// It is shared with interrupt handlers (virtqueue callbacks), hence `Sync`.
    type Data<'bound>: Send + Sync + 'bound;

    /// The table of device ids supported by the driver.
    const ID_TABLE: IdTable;

    /// The feature bits the driver supports (`feature_table`).
    const FEATURES: &'static [u32];

    /// The feature bits the driver supports on legacy (pre-1.0) devices, if they differ
    /// (`feature_table_legacy`).
    const FEATURES_LEGACY: Option<&'static [u32]> = None;

    /// The names of the driver's queues, in the order of its [`VirtqueueInfo`] list; given to
    /// [`Driver::vq_callback`]. [`NoIds`] for a driver without queues.
    type Queue: Ids;

    /// The names of the driver's deferred work items ([`Device::queue_work`]), given to
    /// [`Driver::work`]. [`NoIds`] for a driver without deferred work.
    type Work: Ids;

    /// Checks and adjusts the negotiated features before the driver is probed.
    fn validate(features: &mut FeatureNegotiation<'_>) -> Result {
        let _ = features;
        Ok(())
    }

    /// Binds the driver to a device.
    ///
    /// The device is not live yet: queues may be created and filled (and kicked), but the device
    /// is only marked `DRIVER_OK` once the returned data is stored, after which
    /// [`Driver::ready`] is called.
    ///
    /// `binding` is the span of this binding, for registrations whose callbacks run on data that
    /// borrows from it (`kernel::balloon::BalloonDevInfo`, `kernel::shrinker::Shrinker`): they
    /// are torn down when it ends, after [`Driver::unbind`], whether or not they were dropped.
    fn probe<'bound>(
        dev: &'bound Device<device::Core<'_>>,
        binding: Binding<'bound>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound;

    /// Called once the device is live, after probe and after restore.
    ///
    /// This is where work the device asked for before the driver was bound gets started, as C
    /// drivers do after `virtio_device_ready()`.
    fn ready<'bound>(dev: &'bound Device<device::Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        let _ = (dev, this);
    }

    /// Unbinds the driver from the device.
    ///
    /// Deferred work is stopped already; queues and their callbacks still work, e.g. to give
    /// resources back to the device. Afterwards the device is reset and the data dropped.
    fn unbind<'bound>(dev: &'bound Device<device::Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        let _ = (dev, this);
    }

    /// The device's configuration changed.
    ///
    /// Called in atomic context: it must not sleep (queue work to do so).
    fn config_changed<'bound>(dev: &'bound Device<device::Bound>, this: Pin<&Self::Data<'bound>>) {
        let _ = (dev, this);
    }

    /// The device used buffers of `queue`.
    ///
    /// Called in interrupt context: it must not sleep.
    fn vq_callback<'bound>(
        dev: &'bound Device<device::Bound>,
        this: Pin<&Self::Data<'bound>>,
        queue: Self::Queue,
    ) {
        let _ = (dev, this, queue);
    }

    /// Runs deferred work item `work`, queued with [`Device::queue_work`].
    fn work<'bound>(
        dev: &'bound Device<device::Bound>,
        this: Pin<&Self::Data<'bound>>,
        work: Self::Work,
    ) {
        let _ = (dev, this, work);
    }

    /// The system shuts down: quiesce. Deferred work is stopped already; the device is reset
    /// afterwards.
    fn shutdown<'bound>(dev: &'bound Device<device::Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        let _ = (dev, this);
    }

    /// The system suspends or hibernates.
    ///
    /// A driver that supports it drops its queues here and creates them again in
    /// [`Driver::restore`]. Once this returns `Ok`, the bus stops the device and the queues are
    /// deleted (with the buffers still queued) as soon as the driver holds none of them.
    fn freeze<'bound>(
        dev: &'bound Device<device::Core<'_>>,
        this: Pin<&Self::Data<'bound>>,
    ) -> Result {
        let _ = (dev, this);
        Ok(())
    }

    /// The system resumes. The device has been reset; [`Driver::ready`] follows.
    fn restore<'bound>(
        dev: &'bound Device<device::Core<'_>>,
        this: Pin<&Self::Data<'bound>>,
    ) -> Result {
        let _ = (dev, this);
        Ok(())
    }
}

/// The virtio device representation.
///
/// This structure represents the Rust abstraction for a C `struct virtio_device`. The
/// implementation abstracts the usage of an already existing C `struct virtio_device` within Rust
/// code that we get passed from the C side.
///
/// # Invariants
///
/// A [`Device`] instance represents a valid `struct virtio_device` created by the C portion of
/// the kernel.
#[repr(transparent)]
pub struct Device<Ctx: device::DeviceContext = device::Normal>(
    Opaque<bindings::virtio_device>,
    PhantomData<Ctx>,
);

impl<Ctx: device::DeviceContext> Device<Ctx> {
    fn as_raw(&self) -> *mut bindings::virtio_device {
        self.0.get()
    }

    /// The virtio device type (`VIRTIO_ID_*`).
    pub fn device_id(&self) -> u32 {
        // SAFETY: By the type invariant `self.as_raw()` is valid; `id` is set at registration.
        unsafe { (*self.as_raw()).id.device }
    }

    /// The vendor ID of the device.
    pub fn vendor_id(&self) -> u32 {
        // SAFETY: By the type invariant `self.as_raw()` is valid; `id` is set at registration.
        unsafe { (*self.as_raw()).id.vendor }
    }

    fn config_ops(&self) -> &bindings::virtio_config_ops {
        // SAFETY: A registered virtio device always has `config` ops, which are static.
        unsafe { &*(*self.as_raw()).config }
    }

    /// Only `restore` asks (a kernel without system sleep has none).
    #[cfg(CONFIG_PM_SLEEP)]
    fn is_driver_ok(&self) -> bool {
        let Some(get_status) = self.config_ops().get_status else {
            return false;
        };
        // SAFETY: `get_status` is a mandatory transport op, called with its own device.
        let status = unsafe { get_status(self.as_raw()) };
        u32::from(status) & bindings::VIRTIO_CONFIG_S_DRIVER_OK != 0
    }
}

impl Device<device::Bound> {
    /// Whether feature `bit` was negotiated.
    ///
    /// The C `virtio_has_feature()` `BUG()`s when asked for a device feature the driver does not
    /// list in [`Driver::FEATURES`] (or `FEATURES_LEGACY`): here that is a warning, once, and the
    /// answer `false`, since the device cannot have negotiated what the driver never offered.
    pub fn has_feature(&self, bit: u32) -> bool {
        if bit < bindings::VIRTIO_TRANSPORT_F_START && !self.driver_offers(bit) {
            crate::pr_warn_once!(
                "virtio: feature {} not in the driver's feature table\n",
                bit
            );
            return false;
        }
        self.features().contains(bit)
    }

    /// Whether the bound driver lists device feature `bit` in its feature tables, as
    /// `virtio_check_driver_offered_feature()` looks for it.
    fn driver_offers(&self, bit: u32) -> bool {
        // SAFETY: By the type invariant the device is valid; it is bound, so `dev.driver` points
        // to the `device_driver` embedded in the bound `virtio_driver`, which outlives the binding.
        let drv = unsafe {
            let driver = (*self.as_raw()).dev.driver;
            &*crate::container_of!(driver, bindings::virtio_driver, driver)
        };
        let listed = |table: *const u32, len: u32| {
            if table.is_null() {
                return false;
            }
            // SAFETY: A virtio driver's feature tables are NULL or `len` entries long and static
            // (for a Rust driver, `Driver::FEATURES` and `FEATURES_LEGACY`).
            let table = unsafe { core::slice::from_raw_parts(table, len as usize) };
            table.contains(&bit)
        };
        listed(drv.feature_table, drv.feature_table_size)
            || listed(drv.feature_table_legacy, drv.feature_table_size_legacy)
    }

    /// The byte order of the `__virtio16/32/64` values in the device's buffers: little-endian
    /// for virtio 1.0 devices, the guest's for legacy ones.
    pub fn endian(&self) -> Endian {
        // SAFETY: By the type invariant the device is valid; it is bound, so its features are
        // negotiated and stay as they are.
        let little = unsafe { bindings::virtio_is_little_endian(self.as_raw()) };
        if little {
            Endian::Little
        } else {
            Endian::Big
        }
    }

    /// The device's configuration space, typed by its layout `C` (e.g.
    /// `bindings::virtio_balloon_config`): bounded, in the device type's byte order.
    ///
    /// Returns [`EINVAL`] if the transport gives no access to the configuration space.
    pub fn config<C: ConfigLayout>(&self) -> Result<ConfigSpace<'_, C>> {
        ConfigSpace::new(self)
    }

    /// The features the device negotiated, as a set.
    pub fn features(&self) -> Features {
        Features::of(self)
    }

    /// Whether the transport gives access to the configuration space at all.
    pub fn has_config_access(&self) -> bool {
        self.config_ops().get.is_some()
    }

    /// Queues deferred work item `work`, one of the driver's [`Driver::Work`], on the freezable
    /// system workqueue; [`Driver::work`] runs it.
    ///
    /// Returns `false` if the item is already queued, if the device is not live yet (before
    /// [`Driver::ready`]) or is being removed or shut down, and if `W` is not the bound driver's
    /// `Work`. This makes it the C drivers' `stop_update` check: requests the device makes while
    /// the driver goes away are dropped.
    pub fn queue_work<W: Ids>(&self, work: W) -> bool {
        // SAFETY: While the device is bound to a Rust virtio driver, `priv` is NULL or its
        // `DeviceState`, which lives until the driver data is dropped at the end of unbinding.
        match unsafe { DeviceState::from_priv(self.as_raw()) } {
            Some(state) => state.queue_work(work, false),
            None => false,
        }
    }

    /// Queues deferred work item `work` on the device's own workqueue (see
    /// [`Device::alloc_own_workqueue`]); [`Driver::work`] runs it.
    ///
    /// For long, CPU-bound work that would hold up the shared system workqueue. Returns `false`
    /// as [`Device::queue_work`] does, and also if the device has no workqueue of its own.
    pub fn queue_own_work<W: Ids>(&self, work: W) -> bool {
        // SAFETY: As in `queue_work()`.
        match unsafe { DeviceState::from_priv(self.as_raw()) } {
            Some(state) => state.queue_work(work, true),
            None => false,
        }
    }
}

impl Device<device::Bound> {
    /// Reports the start of a wakeup event on this device (`pm_stay_awake()`): the system does
    /// not suspend until [`Device::pm_relax`] ends it.
    ///
    /// Only has an effect once the device was made wakeup capable with
    /// [`Device::set_wakeup_capable`] (and userspace left wakeup enabled). Calls do not nest: the
    /// caller tracks whether an event is in progress and relaxes once. Never sleeps, so it may be
    /// called from interrupt context, such as [`Driver::config_changed`] or a queue callback.
    ///
    /// # Examples
    ///
    /// ```
    /// use kernel::{device::Bound, virtio};
    ///
    /// fn handle_event(dev: &virtio::Device<Bound>) {
    ///     dev.pm_stay_awake();
    ///     // ... handle the event; the system stays awake meanwhile ...
    ///     dev.pm_relax();
    /// }
    /// ```
    pub fn pm_stay_awake(&self) {
        // SAFETY: By the type invariant the device is valid, and its embedded `struct device`
        // with it. `pm_stay_awake()` takes the device's power lock with interrupts saved, and
        // does nothing for a device without a wakeup source.
        unsafe { bindings::pm_stay_awake(self.as_ref().as_raw()) };
    }

    /// Reports the end of the wakeup event started by [`Device::pm_stay_awake`] (`pm_relax()`).
    ///
    /// Never sleeps, so it may be called from interrupt context.
    pub fn pm_relax(&self) {
        // SAFETY: By the type invariant the device is valid, and its embedded `struct device`
        // with it. `pm_relax()` takes the device's power lock with interrupts saved, and does
        // nothing for a device without a wakeup source.
        unsafe { bindings::pm_relax(self.as_ref().as_raw()) };
    }
}

impl<'a> Device<device::Core<'a>> {
    /// Gives the device a workqueue of its own, named `name`, for [`Device::queue_own_work`].
    ///
    /// It is freezable (suspend waits for its work and holds new work back until resume) and
    /// meant for CPU-bound work (the C balloon's `balloon-wq`: `WQ_FREEZABLE | WQ_CPU_INTENSIVE`).
    /// Removal cancels its work items with the others; the workqueue is destroyed once the
    /// driver data is gone. Typically called in probe, when a feature needs it.
    ///
    /// Returns [`EBUSY`] if the device has one already, [`ENOMEM`] if it cannot be allocated,
    /// [`EINVAL`] outside of a Rust virtio driver's callbacks.
    ///
    /// # Examples
    ///
    /// ```
    /// use kernel::{device::Core, prelude::*, virtio};
    ///
    /// fn probe_hinting(dev: &virtio::Device<Core<'_>>, hinting: bool) -> Result {
    ///     if hinting {
    ///         dev.alloc_own_workqueue(c"balloon-wq")?;
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn alloc_own_workqueue(&self, name: &CStr) -> Result {
        // SAFETY: In `Core` context of a Rust virtio driver `priv` is NULL or our `DeviceState`,
        // which outlives the callback this is called from.
        let state = unsafe { DeviceState::from_priv(self.as_raw()) }.ok_or(EINVAL)?;
        if !state.own_wq.load(Acquire).is_null() {
            return Err(EBUSY);
        }
        // SAFETY: `name` is a valid NUL-terminated string; the workqueue copies it.
        let wq = unsafe { bindings::virtio_alloc_own_workqueue(name.as_char_ptr()) };
        if wq.is_null() {
            return Err(ENOMEM);
        }
        // `Core` context serialises this with itself, so nobody stored one meanwhile.
        // INVARIANT: A workqueue we allocated, set once, destroyed with the state.
        state.own_wq.store(wq, Release);
        Ok(())
    }

    /// Declares whether the device can wake the system up (`device_set_wakeup_capable()`).
    ///
    /// A capable device gets its `power/wakeup` sysfs attributes, and userspace may then enable
    /// a wakeup source for it, which [`Device::pm_stay_awake`] and [`Device::pm_relax`] drive.
    /// It may sleep (it adds sysfs attributes): hence only in a `Core` context, such as probe.
    ///
    /// # Examples
    ///
    /// ```
    /// use kernel::{device::Core, virtio};
    ///
    /// fn probe_wakeup(dev: &virtio::Device<Core<'_>>) {
    ///     dev.set_wakeup_capable(true);
    /// }
    /// ```
    pub fn set_wakeup_capable(&self, capable: bool) {
        // SAFETY: By the type invariant the device is valid, and its embedded `struct device`
        // with it; the `Core` context means process context, as the sysfs update requires.
        unsafe { bindings::device_set_wakeup_capable(self.as_ref().as_raw(), capable) };
    }
}

// SAFETY: `virtio::Device` is a transparent wrapper of `struct virtio_device`.
// The offset is guaranteed to point to a valid device field inside `virtio::Device`.
unsafe impl<Ctx: device::DeviceContext> device::AsBusDevice<Ctx> for Device<Ctx> {
    const OFFSET: usize = offset_of!(bindings::virtio_device, dev);
}

// SAFETY: `Device` is a transparent wrapper of a type that doesn't depend on `Device`'s generic
// argument.
kernel::impl_device_context_deref!(unsafe { Device });
kernel::impl_device_context_into_aref!(Device);

// SAFETY: Instances of `Device` are always reference-counted.
unsafe impl crate::sync::aref::AlwaysRefCounted for Device {
    fn inc_ref(&self) {
        // SAFETY: The existence of a shared reference guarantees that the refcount is non-zero.
        unsafe { bindings::get_device(self.as_ref().as_raw()) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // CAST: `Self` a transparent wrapper of `bindings::virtio_device`.
        let vdev: *mut bindings::virtio_device = obj.cast().as_ptr();

        // SAFETY: By the type invariant of `Self`, `vdev` is a pointer to a valid
        // `struct virtio_device`.
        let dev = unsafe { addr_of_mut!((*vdev).dev) };

        // SAFETY: The safety requirements guarantee that the refcount is non-zero.
        unsafe { bindings::put_device(dev) }
    }
}

impl<Ctx: device::DeviceContext> AsRef<device::Device<Ctx>> for Device<Ctx> {
    fn as_ref(&self) -> &device::Device<Ctx> {
        // SAFETY: By the type invariant of `Self`, `self.as_raw()` is a pointer to a valid
        // `struct virtio_device`.
        let dev = unsafe { addr_of_mut!((*self.as_raw()).dev) };

        // SAFETY: `dev` points to a valid `struct device`.
        unsafe { device::Device::from_raw(dev) }
    }
}

// SAFETY: A `Device` is always reference-counted and can be released from any thread.
unsafe impl Send for Device {}

// SAFETY: `Device` can be shared among threads because all methods of `Device`
// (i.e. `Device<Normal>) are thread safe.
unsafe impl Sync for Device {}

// SAFETY: Same as `Device<Normal>` -- the underlying `struct virtio_device` is the same; `Bound`
// is a zero-sized type-state marker; its methods go through the thread-safe transport ops.
unsafe impl Sync for Device<device::Bound> {}
