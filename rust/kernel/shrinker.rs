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
//!   (reachable through [`Deref`]). [`Shrinker::new`]`(name, data)` allocates and registers it
//!   (`shrinker_alloc()`, `shrinker_register()`); dropping it unregisters it, waits for running
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
//! let spares = KBox::pin_init(
//!     Shrinker::new(c"rust-doc-spares", Spares(Atomic::new(8))),
//!     GFP_KERNEL,
//! )?;
//! // Reclaim may call the callbacks from now on, until `spares` is dropped.
//! assert!(spares.0.load(Relaxed) <= 8);
//! drop(spares);
//! # Ok::<(), Error>(())
//! ```

use crate::{bindings, prelude::*};
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

/// An allocated `struct shrinker`, freed (and unregistered, if registered) on drop.
///
/// # Invariants
///
/// The pointer comes from a successful `shrinker_alloc()` and is freed only by `drop`.
struct RawShrinker(NonNull<bindings::shrinker>);

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
        NonNull::new(raw).map(Self).ok_or(ENOMEM)
    }
}

impl Drop for RawShrinker {
    fn drop(&mut self) {
        // SAFETY: By the type invariants the pointer is live. `shrinker_free()` unregisters a
        // registered shrinker and waits until no callback runs or will run before freeing it.
        unsafe { bindings::shrinker_free(self.0.as_ptr()) };
    }
}

/// A registered shrinker and the data `T` its callbacks run on.
///
/// # Invariants
///
/// Once initialised, `raw` is registered with `count_callback::<T>` and `scan_callback::<T>` as
/// its callbacks and the address of `data` as its private data, and stays so until `raw` is
/// dropped, which happens before `data` is dropped (fields drop in declaration order).
#[pin_data]
pub struct Shrinker<T: Shrink> {
    raw: RawShrinker,
    #[pin]
    data: T,
    // The C structure points to `data`.
    #[pin]
    _pin: PhantomPinned,
}

impl<T: Shrink> Shrinker<T> {
    /// Allocates a shrinker named `name` (shown in debugfs with `CONFIG_SHRINKER_DEBUG`) whose
    /// callbacks run on `data`, and registers it once `data` is in place.
    ///
    /// Reclaim may call the callbacks as soon as the initialiser completes.
    pub fn new<'a, E>(
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
                data <- data,
                _pin: PhantomPinned,
            }? Error)
            .pin_chain(|this| {
                let raw = this.raw.0.as_ptr();
                let data = core::ptr::from_ref(&this.data).cast_mut();
                // SAFETY: `raw` is allocated and not registered yet, so nothing else reads these
                // fields. `data` is pinned: it stays at this address until `this` is dropped,
                // and `raw` is unregistered (and its callbacks waited for) before that.
                unsafe {
                    (*raw).count_objects = Some(count_callback::<T>);
                    (*raw).scan_objects = Some(scan_callback::<T>);
                    (*raw).private_data = data.cast();
                    // INVARIANT: Registered with the callbacks and data just set.
                    bindings::shrinker_register(raw);
                }
                Ok(())
            }))
        })
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
        let raw = s.raw.0.as_ptr();
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
        let s = KBox::pin_init(Shrinker::new(c"rust-kunit-shrinker", pool(10)), GFP_KERNEL)?;
        // Real reclaim may run the callbacks too, but it cannot add objects: at most 10 left.
        let (counted, freed, scanned) = call(&s, 4);
        assert!(counted <= 10);
        assert!(freed <= 4);
        assert_eq!(scanned, freed);
        assert!(s.spare.load(Relaxed) <= 6);
        Ok(())
    }

    #[test]
    fn scan_asks_for_nr_to_scan_and_frees_at_most_what_is_there() -> Result {
        let s = KBox::pin_init(Shrinker::new(c"rust-kunit-shrinker", pool(3)), GFP_KERNEL)?;
        let (_, freed, _) = call(&s, 1000);
        assert!(freed <= 3);
        assert_eq!(s.spare.load(Relaxed), 0);
        // Reclaim cannot have scanned after us: the pool is empty, so it counts nothing.
        assert_eq!(s.asked.load(Relaxed), 1000);
        Ok(())
    }

    #[test]
    fn stop_is_shrink_stop() -> Result {
        let s = KBox::pin_init(Shrinker::new(c"rust-kunit-shrinker", pool(5)), GFP_KERNEL)?;
        s.stop.store(true, Relaxed);
        let (_, freed, _) = call(&s, 2);
        assert_eq!(freed, SHRINK_STOP);
        assert_eq!(s.spare.load(Relaxed), 5);
        Ok(())
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
        let r = KBox::pin_init(Shrinker::new(c"rust-kunit-shrinker", failing), GFP_KERNEL);
        assert_eq!(r.err(), Some(EINVAL));
    }
}
