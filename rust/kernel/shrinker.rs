// SPDX-License-Identifier: GPL-2.0

//! Shrinkers: how memory reclaim asks a cache to give memory back.
//!
//! A subsystem that holds memory it could do without (a cache, pages kept for later) registers a
//! shrinker. When memory runs short, reclaim first asks it how many objects it could free
//! ([`Shrink::count_objects`]) and then asks it to free some ([`Shrink::scan_objects`]).
//!
//! C header: [`include/linux/shrinker.h`](srctree/include/linux/shrinker.h)
//!
//! # API summary
//!
//! - [`Shrink`]: the two callbacks, implemented by the data the shrinker works on.
//! - [`Shrinker<T>`]: pinned owner of a registered `struct shrinker` and of its data `T`
//!   (reachable through [`Deref`]). [`Shrinker::new`]`(binding, name, data)` allocates and
//!   registers it (`shrinker_alloc()`, `shrinker_register()`); dropping it, or the end of the
//!   [`Binding`] if it was not dropped before (leaked), unregisters it, waits for running
//!   callbacks and frees it (`shrinker_free()`) before `T` is dropped.
//! - [`ShrinkControl`]: what reclaim asks for: [`ShrinkControl::nr_to_scan`],
//!   [`ShrinkControl::nid`], [`ShrinkControl::set_nr_scanned`].
//! - [`ScanResult`]: `Freed(n)` or `Stop` (`SHRINK_STOP`).
//!
//! Shrinkers made here are neither NUMA- nor memcg-aware: reclaim asks them once for the whole
//! system.
//!
//! # Examples
//!
//! A pool of spare objects that reclaim may shrink:
//!
//! ```
//! use kernel::prelude::*;
//! use kernel::shrinker::{ScanResult, Shrink, ShrinkControl, Shrinker};
//! use kernel::sync::atomic::{Atomic, Relaxed};
//!
//! struct Spares(Atomic<usize>);
//!
//! impl Shrink for Spares {
//!     fn count_objects(&self, _sc: &ShrinkControl<'_>) -> usize {
//!         self.0.load(Relaxed)
//!     }
//!
//!     fn scan_objects(&self, sc: &mut ShrinkControl<'_>) -> ScanResult {
//!         let have = self.0.load(Relaxed);
//!         let freed = have.min(sc.nr_to_scan());
//!         self.0.store(have - freed, Relaxed);
//!         ScanResult::Freed(freed)
//!     }
//! }
//!
//! // A driver gets its binding from the bus (`virtio::Driver::probe`); a scope stands in here.
//! kernel::binding::scope(|binding| -> Result {
//!     let spares = KBox::pin_init(
//!         Shrinker::new(binding, c"rust-doc-spares", Spares(Atomic::new(8))),
//!         GFP_KERNEL,
//!     )?;
//!     // Reclaim may call the callbacks from now on, until `spares` is dropped.
//!     assert!(spares.0.load(Relaxed) <= 8);
//!     drop(spares);
//!     Ok(())
//! })?;
//! # Ok::<(), Error>(())
//! ```

use crate::{
    binding::{Binding, Enrolment},
    bindings,
    prelude::*,
    sync::atomic::{Acquire, Atomic, Full, Release},
    time::{delay::fsleep, Delta},
};
use core::{
    marker::{PhantomData, PhantomPinned},
    ops::Deref,
    ptr::NonNull,
};

/// `SHRINK_STOP`: the scan callback cannot make progress now.
const SHRINK_STOP: c_ulong = !0;

/// `SHRINK_EMPTY`: reserved for memcg-aware shrinkers; counts and results stay below it.
const SHRINK_EMPTY: c_ulong = !0 - 1;

/// The callbacks of a shrinker, implemented by the data it works on.
///
/// Both run in the context of whoever reclaims memory (kswapd, or an allocating task in direct
/// reclaim), possibly concurrently with each other and with the rest of the data's users. They may
/// sleep only as far as the allocation that triggered reclaim allows; in particular they must not
/// allocate memory with flags that reclaim, nor wait for anything that may itself wait for memory.
pub trait Shrink: Send + Sync {
    /// How many objects could be freed now (the C `count_objects`).
    ///
    /// Zero means nothing to free (or not now): [`Shrink::scan_objects`] is then not called. This
    /// should be cheap: reclaim calls it often.
    fn count_objects(&self, sc: &ShrinkControl<'_>) -> usize;

    /// Frees up to [`ShrinkControl::nr_to_scan`] objects (the C `scan_objects`).
    ///
    /// Returns how many were freed, or [`ScanResult::Stop`] if none can be freed from this
    /// context (e.g. a lock held by the allocating task is needed).
    fn scan_objects(&self, sc: &mut ShrinkControl<'_>) -> ScanResult;
}

/// What a scan achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanResult {
    /// This many objects were freed (possibly zero).
    Freed(usize),
    /// No progress is possible from this reclaim context (`SHRINK_STOP`).
    Stop,
}

impl ScanResult {
    fn to_raw(self) -> c_ulong {
        match self {
            // Counts never reach the reserved values in practice; clamp rather than let a huge
            // count be read as `SHRINK_STOP`.
            ScanResult::Freed(n) => (n as c_ulong).min(SHRINK_EMPTY - 1),
            ScanResult::Stop => SHRINK_STOP,
        }
    }
}

/// The request reclaim passes to a shrinker callback (`struct shrink_control`).
///
/// # Invariants
///
/// `sc` points to a `struct shrink_control` that is valid, and not accessed by anyone else, for
/// `'a`.
pub struct ShrinkControl<'a> {
    sc: NonNull<bindings::shrink_control>,
    _p: PhantomData<&'a mut bindings::shrink_control>,
}

impl ShrinkControl<'_> {
    /// Wraps the request reclaim passed to a callback.
    ///
    /// # Safety
    ///
    /// `sc` must be valid, and used by nothing else, for `'a`.
    unsafe fn from_raw<'a>(sc: NonNull<bindings::shrink_control>) -> ShrinkControl<'a> {
        // INVARIANT: By the safety requirements.
        ShrinkControl {
            sc,
            _p: PhantomData,
        }
    }

    /// How many objects reclaim asks to be scanned (and freed if possible).
    pub fn nr_to_scan(&self) -> usize {
        // SAFETY: By the type invariants `sc` is valid for reads.
        unsafe { (*self.sc.as_ptr()).nr_to_scan }
    }

    /// The NUMA node being shrunk (meaningful for NUMA-aware shrinkers only).
    pub fn nid(&self) -> c_int {
        // SAFETY: By the type invariants `sc` is valid for reads.
        unsafe { (*self.sc.as_ptr()).nid }
    }

    /// Tells reclaim how many objects the scan actually looked at; it defaults to
    /// [`ShrinkControl::nr_to_scan`].
    pub fn set_nr_scanned(&mut self, n: usize) {
        // SAFETY: By the type invariants `sc` is valid for writes and not shared.
        unsafe { (*self.sc.as_ptr()).nr_scanned = n as c_ulong };
    }
}

/// An allocated `struct shrinker`, freed (and unregistered, if registered) by [`RawShrinker::free`]
/// or on drop, whichever comes first.
///
/// # Invariants
///
/// `ptr` comes from a successful `shrinker_alloc()`; it is live until `state` is `FREED`, which
/// it becomes once, when it is freed. It is registered exactly while `state` is `REGISTERED`
/// (or `REGISTERING`, during the registration).
struct RawShrinker {
    ptr: NonNull<bindings::shrinker>,
    state: Atomic<i32>,
}

/// `RawShrinker::state`: allocated, not registered.
const ALLOCATED: i32 = 0;
/// `RawShrinker::state`: being registered.
const REGISTERING: i32 = 1;
/// `RawShrinker::state`: registered.
const REGISTERED: i32 = 2;
/// `RawShrinker::state`: freed; the pointer is dangling.
const FREED: i32 = 3;

// SAFETY: The shrinker core synchronises registration and freeing internally; the pointer may be
// freed from any thread.
unsafe impl Send for RawShrinker {}
// SAFETY: `&RawShrinker` gives no access to the C structure.
unsafe impl Sync for RawShrinker {}

impl RawShrinker {
    fn alloc(name: &CStr) -> Result<Self> {
        // SAFETY: `"%s"` with one NUL-terminated string argument is a valid format; `name` is only
        // read during the call (it is copied for the debugfs name). No flags: neither NUMA- nor
        // memcg-aware.
        let raw = unsafe { bindings::shrinker_alloc(0, c"%s".as_char_ptr(), name.as_char_ptr()) };
        // INVARIANT: A non-NULL result is a fresh allocation.
        NonNull::new(raw)
            .map(|ptr| Self {
                ptr,
                state: Atomic::new(ALLOCATED),
            })
            .ok_or(ENOMEM)
    }

    /// Registers the shrinker with callbacks for `T` running on `data`. `ENODEV` if it was freed
    /// (its binding ended) meanwhile.
    ///
    /// # Safety
    ///
    /// `data` must stay valid (and at this address) until the shrinker is freed.
    unsafe fn register<T: Shrink>(&self, data: *const T) -> Result {
        if self.state.cmpxchg(ALLOCATED, REGISTERING, Full).is_err() {
            return Err(ENODEV);
        }
        let raw = self.ptr.as_ptr();
        // SAFETY: `REGISTERING` keeps `free()` waiting, so `raw` is live and not registered;
        // nothing else reads these fields yet. `data` outlives the registration per the safety
        // requirements.
        unsafe {
            (*raw).count_objects = Some(count_callback::<T>);
            (*raw).scan_objects = Some(scan_callback::<T>);
            (*raw).private_data = data.cast_mut().cast();
            bindings::shrinker_register(raw);
        }
        // INVARIANT: Registered with the callbacks and data just set.
        self.state.store(REGISTERED, Release);
        Ok(())
    }

    /// Unregisters (if registered) and frees the shrinker, after waiting for its callbacks; does
    /// nothing the second time. May sleep.
    fn free(&self) {
        loop {
            match self.state.load(Acquire) {
                FREED => return,
                REGISTERING => fsleep(Delta::from_millis(1)),
                s => {
                    if self.state.cmpxchg(s, FREED, Full).is_ok() {
                        break;
                    }
                }
            }
        }
        // SAFETY: This call moved the state to `FREED`, so the pointer was live and is freed
        // once (type invariant). `shrinker_free()` unregisters a registered shrinker and waits
        // until no callback runs or will run before freeing it.
        unsafe { bindings::shrinker_free(self.ptr.as_ptr()) };
    }
}

impl Drop for RawShrinker {
    fn drop(&mut self) {
        self.free();
    }
}

/// A registered shrinker and the data `T` its callbacks run on.
///
/// It is unregistered on drop, or when the [`Binding`] it was made with ends, whichever comes
/// first: `T` may borrow what ends with the binding, and a shrinker that is never dropped
/// (`core::mem::forget`) must not call it afterwards.
///
/// # Invariants
///
/// Once initialised, `raw` is registered with `count_callback::<T>` and `scan_callback::<T>` as
/// its callbacks and the address of `data` as its private data, and stays so until `raw` is
/// freed: by the teardown of `enrolment` at the end of the binding, or on drop, before `data` is
/// dropped. `enrolment` has left (or been torn down) before anything is dropped.
#[pin_data(PinnedDrop)]
pub struct Shrinker<T: Shrink> {
    raw: RawShrinker,
    #[pin]
    enrolment: Enrolment,
    #[pin]
    data: T,
    // The C structure points to `data`.
    #[pin]
    _pin: PhantomPinned,
}

/// The teardown of every `Shrinker<T>` at the end of its binding, leaked or not.
///
/// # Safety
///
/// `e` must be the `enrolment` of a live `Shrinker<T>`, which stays alive for the call.
unsafe fn revoke_callback<T: Shrink>(e: *const Enrolment) {
    // SAFETY: `e` is the `enrolment` field of a `Shrinker<T>` per the safety requirements, so the
    // container is in the same allocation and alive.
    let this = unsafe { &*crate::container_of!(e.cast_mut(), Shrinker<T>, enrolment) };
    this.raw.free();
}

impl<T: Shrink> Shrinker<T> {
    /// Allocates a shrinker named `name` (shown in debugfs with `CONFIG_SHRINKER_DEBUG`) whose
    /// callbacks run on `data`, and registers it once `data` is in place, for the span of
    /// `binding` at most. `ENODEV` if the binding has ended already.
    ///
    /// Reclaim may call the callbacks as soon as the initialiser completes.
    pub fn new<'a, E>(
        binding: Binding<'a>,
        name: &'a CStr,
        data: impl PinInit<T, E> + 'a,
    ) -> impl PinInit<Self, Error> + 'a
    where
        Error: From<E>,
        E: 'a,
        T: 'a,
    {
        pin_init::pin_init_scope(move || {
            let raw = RawShrinker::alloc(name)?;
            Ok(try_pin_init!(Self {
                raw,
                // SAFETY: `revoke_callback::<T>` may be called with this enrolment for as long
                // as it is enrolled: the drop of `Self` leaves first (type invariant), and it
                // frees `raw` as the drop does.
                enrolment <- unsafe { Enrolment::new(revoke_callback::<T>) },
                data <- data,
                _pin: PhantomPinned,
            }? Error)
            .pin_chain(move |this| {
                // SAFETY: `enrolment` is a structurally pinned field of the pinned `this`.
                let enrolment = unsafe { Pin::new_unchecked(&this.enrolment) };
                // Before registering, so that the end of the binding covers the registration.
                // Should the binding have ended, `this` is dropped, which frees `raw`.
                enrolment.enrol(binding)?;
                // SAFETY: `data` is pinned: it stays at this address until `this` is dropped,
                // and `raw` is freed before that, or before the binding ends, whichever comes
                // first (type invariant).
                unsafe { this.raw.register(core::ptr::from_ref(&this.data)) }
            }))
        })
    }
}

#[pinned_drop]
impl<T: Shrink> PinnedDrop for Shrinker<T> {
    fn drop(self: Pin<&mut Self>) {
        // Off the binding's teardown list first (or after its teardown of `self`), then free the
        // shrinker before `data` is dropped.
        self.enrolment.leave();
        self.raw.free();
    }
}

impl<T: Shrink> Deref for Shrinker<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.data
    }
}

/// The data a registered `Shrinker<T>` runs its callbacks on.
///
/// # Safety
///
/// `shrinker` must be the `raw` of a live `Shrinker<T>`, and the call must happen within a
/// callback of that shrinker (the shrinker core holds a reference that `shrinker_free()` waits
/// for).
unsafe fn data_of<'a, T: Shrink>(shrinker: *mut bindings::shrinker) -> &'a T {
    // SAFETY: By the safety requirements and the type invariants of `Shrinker<T>`, `private_data`
    // is the address of its pinned `data`, which outlives the running callback.
    unsafe { &*(*shrinker).private_data.cast::<T>() }
}

/// The `count_objects` callback of every `Shrinker<T>`.
///
/// # Safety
///
/// Only to be called by the shrinker core, with a shrinker registered by [`Shrinker::new`] for
/// the same `T` and a valid `struct shrink_control`.
unsafe extern "C" fn count_callback<T: Shrink>(
    shrinker: *mut bindings::shrinker,
    sc: *mut bindings::shrink_control,
) -> c_ulong {
    let Some(sc) = NonNull::new(sc) else {
        return 0;
    };
    // SAFETY: The shrinker core calls this for a registered `Shrinker<T>` during the callback.
    let data = unsafe { data_of::<T>(shrinker) };
    // SAFETY: `sc` is the core's request, valid and ours for the duration of the callback.
    let sc = unsafe { ShrinkControl::from_raw(sc) };
    (data.count_objects(&sc) as c_ulong).min(SHRINK_EMPTY - 1)
}

/// The `scan_objects` callback of every `Shrinker<T>`.
///
/// # Safety
///
/// As for [`count_callback`].
unsafe extern "C" fn scan_callback<T: Shrink>(
    shrinker: *mut bindings::shrinker,
    sc: *mut bindings::shrink_control,
) -> c_ulong {
    let Some(sc) = NonNull::new(sc) else {
        return SHRINK_STOP;
    };
    // SAFETY: The shrinker core calls this for a registered `Shrinker<T>` during the callback.
    let data = unsafe { data_of::<T>(shrinker) };
    // SAFETY: `sc` is the core's request, valid and ours for the duration of the callback.
    let mut sc = unsafe { ShrinkControl::from_raw(sc) };
    data.scan_objects(&mut sc).to_raw()
}

#[macros::kunit_tests(rust_kernel_shrinker)]
mod tests {
    use super::*;
    use crate::sync::atomic::{Atomic, Relaxed};

    /// Spare objects, and what the last scan was asked.
    struct Pool {
        spare: Atomic<usize>,
        asked: Atomic<usize>,
        stop: Atomic<bool>,
    }

    impl Shrink for Pool {
        fn count_objects(&self, _sc: &ShrinkControl<'_>) -> usize {
            self.spare.load(Relaxed)
        }

        fn scan_objects(&self, sc: &mut ShrinkControl<'_>) -> ScanResult {
            if self.stop.load(Relaxed) {
                return ScanResult::Stop;
            }
            let want = sc.nr_to_scan();
            self.asked.store(want, Relaxed);
            let have = self.spare.load(Relaxed);
            let freed = have.min(want);
            self.spare.store(have - freed, Relaxed);
            sc.set_nr_scanned(freed);
            ScanResult::Freed(freed)
        }
    }

    /// Calls the registered C callbacks the way reclaim does, asking to scan `nr_to_scan`.
    fn call(s: &Shrinker<Pool>, nr_to_scan: usize) -> (c_ulong, c_ulong, c_ulong) {
        let raw = s.raw.ptr.as_ptr();
        let mut sc = bindings::shrink_control {
            nr_to_scan: nr_to_scan as c_ulong,
            nr_scanned: nr_to_scan as c_ulong,
            ..Default::default()
        };
        // SAFETY: `raw` is registered by `Shrinker::new` and `s` keeps it alive; reading the
        // callback pointers races with nothing (they are set once, before registration).
        let (count, scan) = unsafe { ((*raw).count_objects, (*raw).scan_objects) };
        let (Some(count), Some(scan)) = (count, scan) else {
            return (0, 0, 0);
        };
        // SAFETY: What the shrinker core does: a registered shrinker and a valid request.
        let counted = unsafe { count(raw, &mut sc) };
        // SAFETY: As above.
        let freed = unsafe { scan(raw, &mut sc) };
        (counted, freed, sc.nr_scanned)
    }

    fn pool(spare: usize) -> Pool {
        Pool {
            spare: Atomic::new(spare),
            asked: Atomic::new(0),
            stop: Atomic::new(false),
        }
    }

    #[test]
    fn callbacks_reach_the_data() -> Result {
        crate::binding::scope(|binding| -> Result {
            let s = KBox::pin_init(
                Shrinker::new(binding, c"rust-kunit-shrinker", pool(10)),
                GFP_KERNEL,
            )?;
            // Real reclaim may run the callbacks too, but it cannot add objects: at most 10 left.
            let (counted, freed, scanned) = call(&s, 4);
            assert!(counted <= 10);
            assert!(freed <= 4);
            assert_eq!(scanned, freed);
            assert!(s.spare.load(Relaxed) <= 6);
            Ok(())
        })
    }

    #[test]
    fn scan_asks_for_nr_to_scan_and_frees_at_most_what_is_there() -> Result {
        crate::binding::scope(|binding| -> Result {
            let s = KBox::pin_init(
                Shrinker::new(binding, c"rust-kunit-shrinker", pool(3)),
                GFP_KERNEL,
            )?;
            let (_, freed, _) = call(&s, 1000);
            assert!(freed <= 3);
            assert_eq!(s.spare.load(Relaxed), 0);
            // Reclaim cannot have scanned after us: the pool is empty, so it counts nothing.
            assert_eq!(s.asked.load(Relaxed), 1000);
            Ok(())
        })
    }

    #[test]
    fn stop_is_shrink_stop() -> Result {
        crate::binding::scope(|binding| -> Result {
            let s = KBox::pin_init(
                Shrinker::new(binding, c"rust-kunit-shrinker", pool(5)),
                GFP_KERNEL,
            )?;
            s.stop.store(true, Relaxed);
            let (_, freed, _) = call(&s, 2);
            assert_eq!(freed, SHRINK_STOP);
            assert_eq!(s.spare.load(Relaxed), 5);
            Ok(())
        })
    }

    #[test]
    fn results_stay_below_the_reserved_values() {
        assert_eq!(ScanResult::Freed(7).to_raw(), 7);
        assert_eq!(ScanResult::Stop.to_raw(), SHRINK_STOP);
        assert_eq!(ScanResult::Freed(usize::MAX).to_raw(), SHRINK_EMPTY - 1);
    }

    #[test]
    fn a_failing_data_initialiser_frees_the_shrinker() {
        // SAFETY: The closure initialises nothing and fails, which `pin_init_from_closure` allows.
        let failing =
            unsafe { pin_init::pin_init_from_closure::<Pool, Error>(|_slot| Err(EINVAL)) };
        crate::binding::scope(|binding| {
            let r = KBox::pin_init(
                Shrinker::new(binding, c"rust-kunit-shrinker", failing),
                GFP_KERNEL,
            );
            assert_eq!(r.err(), Some(EINVAL));
        });
    }

    #[test]
    fn a_leaked_shrinker_is_freed_when_its_binding_ends() -> Result {
        let mut leaked: *const Shrinker<Pool> = core::ptr::null();
        crate::binding::scope(|binding| -> Result {
            let s = KBox::pin_init(
                Shrinker::new(binding, c"rust-kunit-shrinker", pool(4)),
                GFP_KERNEL,
            )?;
            assert_eq!(s.raw.state.load(Relaxed), REGISTERED);
            // What `core::mem::forget` of the box does: its drop never runs.
            // SAFETY: The value is not moved: the box is only turned into a pointer, dropped
            // below.
            leaked = KBox::into_raw(unsafe { Pin::into_inner_unchecked(s) });
            Ok(())
        })?;
        // SAFETY: The leaked box is alive until it is rebuilt and dropped below.
        let s = unsafe { &*leaked };
        // Unregistered and freed by the end of the binding: reclaim calls it no more.
        assert_eq!(s.raw.state.load(Relaxed), FREED);
        // SAFETY: `leaked` comes from `KBox::into_raw` and is not used afterwards.
        drop(unsafe { KBox::from_raw(leaked.cast_mut()) });
        Ok(())
    }

    #[test]
    fn no_shrinker_once_its_binding_has_ended() {
        pin_init::stack_pin_init!(let teardown = crate::binding::Teardown::new());
        // SAFETY: `teardown` is pinned on this frame and runs right away, before anything the
        // binding could cover goes away.
        let binding = unsafe { crate::binding::Teardown::binding(core::ptr::from_ref(&*teardown)) };
        teardown.run();
        let r = KBox::pin_init(
            Shrinker::new(binding, c"rust-kunit-shrinker", pool(1)),
            GFP_KERNEL,
        );
        assert_eq!(r.err(), Some(ENODEV));
    }
}
