// SPDX-License-Identifier: GPL-2.0

//! Registrations that end with a device binding, whether or not their owner is dropped.
//!
//! A C callback registered on Rust data (an OOM notifier, a free page reporting device, a
//! shrinker, a balloon's migration callback) must be unregistered before that data, or anything
//! it borrows, goes away. Unregistering on drop alone is not enough: safe code may skip a drop
//! (`core::mem::forget` of a pinned box keeps the memory but ends nothing), while what the data
//! borrows (a bound device, its virtqueues) ends with the device's binding all the same. The
//! callback would then run on dangling borrows.
//!
//! A [`Binding<'b>`] stands for a span of time, the binding of a device to a driver or a call of
//! [`scope`], whose end `'b` is controlled by the owner of a [`Teardown`]. Abstractions that
//! register callbacks on data `T: 'b` take a `Binding<'b>` and enrol the registration with its
//! `Teardown`; when the span ends, [`Teardown::run`] tears down whatever is still enrolled, as
//! its drop would have, before any of the data borrowed for `'b` ends. A registration that is
//! dropped earlier leaves the list on drop.
//!
//! `'b` is invariant: a `Binding<'b>` cannot be passed off as a binding of a shorter span, so
//! data that lives shorter than the binding cannot be registered through it:
//!
//! ```ignore
//! use kernel::{binding, prelude::*, shrinker::{ScanResult, Shrink, ShrinkControl, Shrinker}};
//!
//! struct Borrowing<'a>(&'a usize);
//! # impl Shrink for Borrowing<'_> {
//! #     fn count_objects(&self, _: &ShrinkControl<'_>) -> usize { *self.0 }
//! #     fn scan_objects(&self, _: &mut ShrinkControl<'_>) -> ScanResult { ScanResult::Stop }
//! # }
//!
//! binding::scope(|b| -> Result {
//!     let objects = 8;
//!     // error[E0597]: `objects` does not live long enough
//!     let s = KBox::pin_init(Shrinker::new(b, c"leak", Borrowing(&objects)), GFP_KERNEL)?;
//!     core::mem::forget(s);
//!     Ok(())
//! })
//! ```
//!
//! (Kernel doctests cannot be `compile_fail`; `make lint` of the rballoon tree builds the same
//! leak, `tools/testing/rballoon/compile-fail/leak_borrowed.rs`, with a driver's rustc command line
//! and checks that rustc refuses it: "does not live long enough".)
//!
//! Bus abstractions own the `Teardown` of each bound device and call [`Teardown::run`] on unbind
//! (the virtio bus: after the driver's `unbind`, before its data is dropped and its queues
//! deleted). [`scope`] makes a binding for the duration of a closure, as for tests.

use crate::{
    error::{code::ENODEV, Result},
    new_mutex,
    prelude::*,
    sync::{
        atomic::{Acquire, Atomic, Full, Relaxed, Release},
        Mutex,
    },
    time::{delay::fsleep, Delta},
};
use core::{cell::UnsafeCell, marker::PhantomData, marker::PhantomPinned, ptr};

/// The span of a device binding (or of a [`scope`]) whose end is `'b`.
///
/// Registrations whose callbacks run on data `T: 'b` take one, so that they are torn down by the
/// [`Teardown`] it belongs to when the span ends, whatever became of their owner.
///
/// # Invariants
///
/// `teardown` is pinned, and its [`Teardown::run`] is called before `'b` ends. `'b` is
/// invariant.
#[derive(Clone, Copy)]
pub struct Binding<'b> {
    teardown: &'b Teardown,
    _invariant: PhantomData<fn(&'b ()) -> &'b ()>,
}

/// The registrations enrolled during one binding, torn down together when it ends.
///
/// # Invariants
///
/// Every `Enrolment` on `list` is pinned, alive and in state `LINKED`; one that `run()` takes off
/// is `REVOKING` until its teardown is over. Once `closed`, nothing is added.
#[pin_data(PinnedDrop)]
pub struct Teardown {
    #[pin]
    list: Mutex<List>,
}

/// The enrolments of a [`Teardown`], linked through their `next`.
///
/// # Invariants
///
/// `first` is NULL or the first of a NULL-terminated chain of pinned, live enrolments in state
/// `LINKED`, each on this list only.
struct List {
    first: *const Enrolment,
    closed: bool,
}

// SAFETY: The pointers are only followed under the `Teardown`'s lock, from any thread: the
// enrolments they point to are pinned and stay alive while linked.
unsafe impl Send for List {}

impl Teardown {
    /// An empty teardown list.
    pub fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            list <- new_mutex!(
                List {
                    first: ptr::null(),
                    closed: false,
                },
                "binding::Teardown"
            ),
        })
    }

    /// A binding whose registrations enrol with `this`.
    ///
    /// # Safety
    ///
    /// `this` must point to a pinned `Teardown` that stays valid for `'b`, and the caller must
    /// call [`Teardown::run`] on it (dropping it calls it) before `'b` ends, that is before any
    /// data that lives only as long as `'b` goes away.
    pub unsafe fn binding<'b>(this: *const Self) -> Binding<'b> {
        // INVARIANT: Per the safety requirements.
        Binding {
            // SAFETY: Valid and pinned for `'b` per the safety requirements.
            teardown: unsafe { &*this },
            _invariant: PhantomData,
        }
    }

    /// Ends the binding: tears down every enrolled registration (as dropping its owner would)
    /// and refuses new ones. May sleep: teardowns wait for the callbacks they end.
    ///
    /// Running it again does nothing.
    pub fn run(&self) {
        loop {
            let e = {
                let mut list = self.list.lock();
                list.closed = true;
                let e = list.first;
                if e.is_null() {
                    return;
                }
                // SAFETY: `e` is linked, so pinned and alive (type invariant); its `next` is only
                // accessed under this lock.
                list.first = unsafe { *(*e).next.get() };
                // SAFETY: As above.
                unsafe { (*e).state.store(REVOKING, Release) };
                e
            };
            // SAFETY: `e` left the list in state `REVOKING`: its owner, if it is being dropped,
            // waits in `leave()` until it is `DONE`, so it stays alive across the call, which is
            // what `enrol()` was promised.
            unsafe { ((*e).revoke)(e) };
            // SAFETY: As above; this is the last access to `e`.
            unsafe { (*e).state.store(DONE, Release) };
        }
    }
}

#[pinned_drop]
impl PinnedDrop for Teardown {
    fn drop(self: Pin<&mut Self>) {
        self.run();
    }
}

/// Runs `f` with a binding that ends when `f` returns: whatever `f` registered through it and
/// did not drop (leaked included) is torn down before `scope` returns.
///
/// `f` is called for every lifetime `'b`, so what it registers may only borrow data that
/// outlives the call of `scope`.
pub fn scope<R>(f: impl for<'b> FnOnce(Binding<'b>) -> R) -> R {
    pin_init::stack_pin_init!(let teardown = Teardown::new());
    let teardown: Pin<&Teardown> = teardown.as_ref();
    // SAFETY: `teardown` is pinned on this stack frame; it is run (by its drop at the latest)
    // before this function returns, and `f` cannot keep the binding beyond its call (`'b` is
    // higher-ranked, so the result cannot name it).
    let binding = unsafe { Teardown::binding(ptr::from_ref(teardown.get_ref())) };
    let r = f(binding);
    teardown.run();
    r
}

/// `Enrolment::state`: not enrolled (yet, or enrolment failed).
const NEW: i32 = 0;
/// `Enrolment::state`: on its teardown's list.
const LINKED: i32 = 1;
/// `Enrolment::state`: taken off the list by `Teardown::run`, being torn down.
const REVOKING: i32 = 2;
/// `Enrolment::state`: off the list for good; nothing refers to it any more.
const DONE: i32 = 3;

/// What an abstraction embeds in a registration to have it torn down at the end of a binding.
///
/// # Invariants
///
/// - `next` and the list it links are only accessed under `teardown`'s lock.
/// - While `state` is `LINKED` or `REVOKING`, `teardown` points to the pinned, live [`Teardown`]
///   this enrolment was added to, which calls `revoke` on it at most once.
#[pin_data]
pub(crate) struct Enrolment {
    next: UnsafeCell<*const Enrolment>,
    teardown: UnsafeCell<*const Teardown>,
    state: Atomic<i32>,
    revoke: unsafe fn(*const Enrolment),
    // Linked by address.
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: The cells are only written by `enrol()` (before the enrolment is shared through the
// list, under the lock) and under the teardown's lock; the state is atomic.
unsafe impl Send for Enrolment {}
// SAFETY: As above.
unsafe impl Sync for Enrolment {}

impl Enrolment {
    /// An enrolment whose teardown is `revoke`, not enrolled yet.
    ///
    /// # Safety
    ///
    /// `revoke` must be safe to call with a pointer to this enrolment for as long as it is
    /// enrolled (until [`Enrolment::leave`] returns): it ends every callback of the registration
    /// that embeds it, as its drop would.
    pub(crate) unsafe fn new(revoke: unsafe fn(*const Enrolment)) -> impl PinInit<Self> {
        pin_init!(Self {
            next: UnsafeCell::new(ptr::null()),
            teardown: UnsafeCell::new(ptr::null()),
            state: Atomic::new(NEW),
            revoke,
            _pin: PhantomPinned,
        })
    }

    /// Adds this enrolment to `binding`'s teardown list. `ENODEV` if the binding has ended.
    ///
    /// Call it once, before the registration can have callbacks; its owner must call
    /// [`Enrolment::leave`] when it is dropped, before anything `revoke` uses goes away.
    pub(crate) fn enrol(self: Pin<&Self>, binding: Binding<'_>) -> Result {
        let teardown = binding.teardown;
        let mut list = teardown.list.lock();
        if list.closed {
            return Err(ENODEV);
        }
        if self.state.load(Relaxed) != NEW {
            return Err(EBUSY);
        }
        let this = ptr::from_ref(self.get_ref());
        // SAFETY: Not on any list yet (`NEW`), so nothing else accesses the cells.
        unsafe {
            *self.next.get() = list.first;
            *self.teardown.get() = ptr::from_ref(teardown);
        }
        // INVARIANT: `self` is pinned, and `teardown` lives until it has run (`Binding`).
        list.first = this;
        self.state.store(LINKED, Release);
        Ok(())
    }

    /// Leaves the teardown list, or waits until a teardown in progress is finished. May sleep.
    ///
    /// Afterwards `revoke` is not and will not be called.
    pub(crate) fn leave(&self) {
        loop {
            match self.state.load(Acquire) {
                NEW | DONE => return,
                LINKED => {
                    // SAFETY: `LINKED`: `teardown` is alive (type invariant) until `run()` has
                    // taken this enrolment off its list, which it does under the lock we take.
                    let teardown = unsafe { &**self.teardown.get() };
                    let mut list = teardown.list.lock();
                    if self.state.load(Relaxed) == LINKED {
                        let this = ptr::from_ref(self);
                        let mut link: *mut *const Enrolment = &mut list.first;
                        // SAFETY: Linked enrolments are alive and their `next` is ours under the
                        // lock; `self` is on the list (`LINKED`), so the walk finds it.
                        unsafe {
                            while *link != this {
                                link = (**link).next.get();
                            }
                            *link = *self.next.get();
                        }
                        self.state.store(DONE, Release);
                        return;
                    }
                    // `run()` took it meanwhile: wait for the teardown below.
                }
                _ => fsleep(Delta::from_millis(1)),
            }
        }
    }
}
/// Whether a registration that a binding can end (an OOM notifier, a page reporting device) is
/// off, on, or changing.
///
/// One (un)registration claims it at a time and settles it when done; whoever ends the
/// registration for good first waits for a change in progress. Claiming is fully ordered, so an
/// owner that sets its own "ended" flag, fully ordered, before looking here either sees the
/// claim (and waits for it) or is seen by the claimant, which looks at the flag after claiming.
pub(crate) struct Switch(Atomic<i32>);

/// [`Switch`]: not registered.
const SWITCH_OFF: i32 = 0;
/// [`Switch`]: being registered or unregistered.
const SWITCH_CHANGING: i32 = 1;
/// [`Switch`]: registered.
const SWITCH_ON: i32 = 2;

impl Switch {
    /// Off.
    pub(crate) fn new() -> Self {
        Self(Atomic::new(SWITCH_OFF))
    }

    /// Claims an off switch to register; `false` if it was not off.
    pub(crate) fn claim_off(&self) -> bool {
        self.0.cmpxchg(SWITCH_OFF, SWITCH_CHANGING, Full).is_ok()
    }

    /// Claims an on switch to unregister; `false` if it was not on.
    pub(crate) fn claim_on(&self) -> bool {
        self.0.cmpxchg(SWITCH_ON, SWITCH_CHANGING, Full).is_ok()
    }

    /// Ends a claim: registered (`on`) or not.
    pub(crate) fn settle(&self, on: bool) {
        self.0
            .store(if on { SWITCH_ON } else { SWITCH_OFF }, Release);
    }

    /// Whether it is on (and no claim in progress).
    pub(crate) fn is_on(&self) -> bool {
        self.0.load(Acquire) == SWITCH_ON
    }

    /// Waits until no claim is in progress. May sleep.
    pub(crate) fn wait_settled(&self) {
        while self.0.load(Acquire) == SWITCH_CHANGING {
            fsleep(Delta::from_millis(1));
        }
    }
}
