// SPDX-License-Identifier: GPL-2.0

//! Virtqueues: creating a device's queues and exchanging owned buffers with the device.
//!
//! A driver describes its queues with a list of [`VirtqueueInfo`] and creates them with
//! [`Device::find_vqs`]. Queues the device does not have are listed as
//! [`VirtqueueInfo::absent`]: they keep their position in the list (so callback positions and
//! the driver's numbering do not change) but are left nameless, and the transport neither
//! creates them nor counts them when it numbers the queues, exactly as for C drivers that pass a
//! NULL name.
//!
//! Each [`Virtqueue`] carries buffers of one type: a [`KBox<T>`] is handed over to the device
//! with [`Virtqueue::add_outbuf`] (the device reads it, `T:` [`OutBuffer`]) or
//! [`Virtqueue::add_inbuf`] (the device writes it, `T:` [`InBuffer`]), and comes back from
//! [`Virtqueue::get_buf`] once the device has used it. While the device holds a buffer nobody
//! else can reach it.
//!
//! C header: [`include/linux/virtio.h`](srctree/include/linux/virtio.h)

use super::{ids, Device, DeviceState, DeviceStop, Ids, PageBlock};
use crate::{
    alloc::Flags,
    bindings, device,
    error::to_result,
    new_spinlock,
    prelude::*,
    sync::{Arc, SpinLock},
};
use core::{marker::PhantomData, ptr::NonNull};

/// The highest number of queues with a callback a driver may list in [`Device::find_vqs`]: only
/// the first this many positions of the list may have one.
pub const MAX_CALLBACK_QUEUES: usize = 16;

/// The description of one queue for [`Device::find_vqs`]: its name in the driver
/// ([`Driver::Queue`]), its name for the transport, and whether it has a callback.
///
/// [`Driver::Queue`]: super::Driver::Queue
#[derive(Clone, Copy)]
pub struct VirtqueueInfo<Q: Ids> {
    queue: Q,
    name: Option<&'static CStr>,
    callback: bool,
}

impl<Q: Ids> VirtqueueInfo<Q> {
    /// Queue `queue`, named `name`, whose used buffers are signalled to [`Driver::vq_callback`].
    ///
    /// [`Driver::vq_callback`]: super::Driver::vq_callback
    pub const fn new(queue: Q, name: &'static CStr) -> Self {
        Self {
            queue,
            name: Some(name),
            callback: true,
        }
    }

    /// Queue `queue`, named `name`, that the driver polls, without callback.
    pub const fn without_callback(queue: Q, name: &'static CStr) -> Self {
        Self {
            queue,
            name: Some(name),
            callback: false,
        }
    }

    /// Queue `queue`, which the device does not have (its feature was not negotiated).
    pub const fn absent(queue: Q) -> Self {
        Self {
            queue,
            name: None,
            callback: false,
        }
    }

    /// `Self::new(queue, name)` if `present`, else [`Self::absent`].
    pub const fn new_if(present: bool, queue: Q, name: &'static CStr) -> Self {
        if present {
            Self::new(queue, name)
        } else {
            Self::absent(queue)
        }
    }
}

/// A buffer the device reads: the bytes given to the device are [`OutBuffer::out_bytes`].
///
/// The bytes must lie within the buffer itself (not in memory it points to): they are checked to
/// be inside the [`KBox`] allocation when the buffer is added, since that is memory the device
/// can be given and that stays in place while the device holds it.
pub trait OutBuffer {
    /// The bytes to hand to the device.
    fn out_bytes(&self) -> &[u8];
}

/// A buffer the device writes: the device may write anything to [`InBuffer::in_bytes`].
///
/// As for [`OutBuffer`], the bytes must lie within the buffer itself.
pub trait InBuffer {
    /// The bytes the device may write.
    fn in_bytes(&mut self) -> &mut [u8];
}

impl<const N: usize> OutBuffer for [u8; N] {
    fn out_bytes(&self) -> &[u8] {
        self
    }
}

impl<const N: usize> InBuffer for [u8; N] {
    fn in_bytes(&mut self) -> &mut [u8] {
        self
    }
}

/// A buffer that lends the device a [`PageBlock`] it owns, for the device to write.
///
/// Used with [`Virtqueue::add_inbuf_pages`], e.g. for the free page blocks a balloon hints to the
/// host. The block must be owned by the buffer (directly, or through a box or reference count):
/// it then stays allocated while the queue holds the buffer, since nothing can drop or change the
/// buffer meanwhile. A buffer type may carry other kinds of data too and return `None` for them.
pub trait PageBuffer {
    /// The block to lend, if this buffer carries one.
    fn page_block(&self) -> Option<&PageBlock>;
}

/// A scatterlist of memory that can be lent to a device for as long as it is borrowed.
///
/// Used with [`Virtqueue::lend_inbuf_sg`] for memory the driver does not own, such as the free
/// pages page reporting hands to a balloon.
///
/// # Safety
///
/// For as long as `&self` is borrowed, [`LentScatterList::sg_raw`] points to
/// [`LentScatterList::sg_nents`] (at least one) initialised entries, the last one marked as the
/// end of the list, describing memory in the kernel's linear mapping that the device may write
/// and that nothing else accesses meanwhile.
pub unsafe trait LentScatterList {
    /// The first entry.
    fn sg_raw(&self) -> *mut bindings::scatterlist;
    /// The number of entries.
    fn sg_nents(&self) -> u32;
}

// SAFETY: `ReportedPages` is free memory that page reporting lends to the driver for the duration
// of the report callback, which its borrow does not outlive; its scatterlist has `len()` entries,
// the last one marked as the end.
unsafe impl LentScatterList for crate::page_reporting::ReportedPages<'_> {
    fn sg_raw(&self) -> *mut bindings::scatterlist {
        self.as_raw()
    }

    fn sg_nents(&self) -> u32 {
        // The page reporting capacity is at most 32 entries.
        self.len().try_into().unwrap_or(0)
    }
}

/// The queues found by one call of [`Device::find_vqs`], to be taken out one by one, by their
/// names `Q`.
///
/// The queues are deleted together once this and all [`Virtqueue`]s taken from it are dropped
/// and the bus has stopped the device (on removal, after freeze).
///
/// # Invariants
///
/// Each `Some` in `vqs` is a live queue of `set`, found by `find_vqs` for a device bound for
/// `'a` and not yet taken: no [`Virtqueue`] refers to it. `vqs` has one entry per name in `Q`,
/// at its position.
pub struct Virtqueues<'a, Q: Ids> {
    set: Arc<VirtqueueSet>,
    vqs: KVec<Option<NonNull<bindings::virtqueue>>>,
    _p: PhantomData<(&'a (), Q)>,
}

impl<'a, Q: Ids> Virtqueues<'a, Q> {
    /// Takes queue `queue`, for buffers of type `KBox<T>`.
    ///
    /// Returns [`ENOENT`] if there is no such queue (absent or already taken).
    pub fn take<T>(&mut self, queue: Q) -> Result<Virtqueue<'a, T>> {
        let index = queue.position();
        let vq = self
            .vqs
            .get_mut(index)
            .and_then(Option::take)
            .ok_or(ENOENT)?;
        // The buffers the queue still holds when it is deleted are `KBox<T>`s.
        if let Some(drain) = self.set.drains.lock().get_mut(index) {
            *drain = Some(drain_queue::<T>);
        }
        // INVARIANT: `vq` was created by `find_vqs()` of `self.set`, and is taken only once.
        Ok(Virtqueue {
            vq,
            set: self.set.clone(),
            _p: PhantomData,
        })
    }

    /// Whether queue `queue` exists (and was not taken yet).
    pub fn has(&self, queue: Q) -> bool {
        matches!(self.vqs.get(queue.position()), Some(Some(_)))
    }
}

/// Frees the buffers still queued on a queue of `KBox<T>`s, which the device no longer uses.
type DrainFn = unsafe fn(NonNull<bindings::virtqueue>);

/// Takes every buffer still queued on `vq` off it and drops it.
///
/// # Safety
///
/// `vq` must be a live queue of a stopped device, every token on it a `KBox<T>`, and nothing else
/// may use the queue meanwhile.
unsafe fn drain_queue<T>(vq: NonNull<bindings::virtqueue>) {
    loop {
        // SAFETY: Per the safety requirements; detaching also unmaps the buffer.
        let token = unsafe { bindings::virtqueue_detach_unused_buf(vq.as_ptr()) };
        let Some(token) = NonNull::new(token) else {
            break;
        };
        // SAFETY: Per the safety requirements the token is a `KBox<T>`, handed back once.
        drop(unsafe { KBox::from_raw(token.as_ptr().cast::<T>()) });
    }
}

/// The queues of one [`Device::find_vqs`] call, deleted together.
///
/// The bus keeps a reference to the set of the device's current queues until it stops the
/// device (removal, freeze, a failed probe): dropping a [`Virtqueue`] never touches the device,
/// and the buffers it held stay the device's until then.
///
/// # Invariants
///
/// - `vdev` is valid and bound for as long as this exists, the queues it found are not deleted
///   before this is dropped, and `stop` is the device's.
/// - `vqs` holds the queues `find_vqs` made, at their positions (NULL where none was made).
/// - `drains[i]` is `Some` once queue `i` was taken as a [`Virtqueue<T>`], and is then
///   `drain_queue::<T>`.
#[pin_data(PinnedDrop)]
pub(super) struct VirtqueueSet {
    vdev: *mut bindings::virtio_device,
    stop: Arc<DeviceStop>,
    vqs: KVec<*mut bindings::virtqueue>,
    #[pin]
    drains: SpinLock<KVec<Option<DrainFn>>>,
}

// SAFETY: The device pointer is used to stop the device and for `del_vqs`, which the transports
// allow from any thread in process context; the queue pointers are only used once the device is
// stopped and their `Virtqueue`s are gone.
unsafe impl Send for VirtqueueSet {}
// SAFETY: Nothing is shared but the pointers (see `Send`), the atomic stop record and the
// drain table, which is behind a lock.
unsafe impl Sync for VirtqueueSet {}

#[pinned_drop]
impl PinnedDrop for VirtqueueSet {
    fn drop(self: Pin<&mut Self>) {
        // The bus stopped the device before it let go of the set; this only covers a set that
        // never reached it (`find_vqs` failing half-way).
        self.stop.stop();
        let drains = core::mem::take(&mut *self.drains.lock());
        for (vq, drain) in self.vqs.iter().zip(drains.iter()) {
            if let (Some(vq), Some(drain)) = (NonNull::new(*vq), drain) {
                // SAFETY: `vq` is a live queue of this set (type invariants), the device is
                // stopped, its `Virtqueue` is gone (it held a reference to `self`), and its
                // tokens are the `KBox`es `drain` was made for.
                unsafe { drain(vq) };
            }
        }
        // SAFETY: By the type invariants `vdev` is valid and its queues still exist; the device
        // is stopped and every `Virtqueue` using them is gone (each held a reference to `self`).
        unsafe { DeviceStop::delete_queues(self.vdev) };
    }
}

/// A virtqueue carrying buffers of type `KBox<T>`.
///
/// Operations on one queue must not run concurrently, hence `&mut self`: keep the queue in a
/// lock if several contexts use it.
///
/// # Invariants
///
/// `vq` is a live queue of `set`'s device, and every token queued on it is a `KBox<T>` turned into
/// a raw pointer by this queue.
pub struct Virtqueue<'a, T> {
    vq: NonNull<bindings::virtqueue>,
    set: Arc<VirtqueueSet>,
    _p: PhantomData<(&'a (), KBox<T>)>,
}

// SAFETY: The queue may be used from any thread as long as uses are serialised (`&mut self`); it
// owns the `KBox<T>`s in flight.
unsafe impl<T: Send> Send for Virtqueue<'_, T> {}

/// Turns a byte region of a boxed `T` into a one-entry scatterlist, after checking that it lies
/// inside the box.
fn sg_for<T>(b: &KBox<T>, bytes: *const u8, len: usize) -> Result<bindings::scatterlist> {
    let base = core::ptr::from_ref::<T>(b) as usize;
    let start = bytes as usize;
    let inside = start >= base
        && start
            .checked_add(len)
            .is_some_and(|end| end <= base + core::mem::size_of::<T>());
    if len == 0 || !inside {
        return Err(EINVAL);
    }
    let len: u32 = len.try_into()?;
    let mut sg = bindings::scatterlist::default();
    // SAFETY: `sg` is valid for writes; `bytes..bytes + len` is inside a kmalloc allocation, i.e.
    // in the kernel's linear mapping, as `sg_init_one()` requires.
    unsafe { bindings::sg_init_one(&mut sg, bytes.cast(), len) };
    Ok(sg)
}

impl<'a, T> Virtqueue<'a, T> {
    fn as_raw(&self) -> *mut bindings::virtqueue {
        self.vq.as_ptr()
    }

    fn add(
        &mut self,
        buf: KBox<T>,
        sg: Result<bindings::scatterlist>,
        out: bool,
        gfp: Flags,
    ) -> Result<(), (Error, KBox<T>)> {
        let mut sg = match sg {
            Ok(sg) => sg,
            Err(e) => return Err((e, buf)),
        };
        let token = KBox::into_raw(buf);
        // SAFETY: `self.as_raw()` is a live queue (type invariant), used exclusively (`&mut
        // self`); `sg` describes memory owned by `*token` (inside it, or a page block it owns),
        // which the queue now owns until the device gives it back; `token` is non-NULL.
        let ret = unsafe {
            if out {
                bindings::virtqueue_add_outbuf(
                    self.as_raw(),
                    &mut sg,
                    1,
                    token.cast(),
                    gfp.as_raw(),
                )
            } else {
                bindings::virtqueue_add_inbuf(self.as_raw(), &mut sg, 1, token.cast(), gfp.as_raw())
            }
        };
        match to_result(ret) {
            Ok(()) => Ok(()),
            // SAFETY: The queue did not take `token`, which came from `KBox::into_raw` above.
            Err(e) => Err((e, unsafe { KBox::from_raw(token) })),
        }
    }

    /// Hands `buf` to the device to read.
    ///
    /// On failure (e.g. [`ENOSPC`] if the queue is full, [`EINVAL`] if [`OutBuffer::out_bytes`] is
    /// empty or not inside `buf`) the buffer is given back with the error.
    ///
    /// # Examples
    ///
    /// ```
    /// use kernel::{prelude::*, virtio::Virtqueue};
    ///
    /// fn send(vq: &mut Virtqueue<'_, [u8; 16]>) -> Result {
    ///     let buf = KBox::new([0x5a; 16], GFP_KERNEL)?;
    ///     vq.add_outbuf(buf, GFP_KERNEL).map_err(|(e, _buf)| e)?;
    ///     vq.kick();
    ///     Ok(())
    /// }
    /// ```
    pub fn add_outbuf(&mut self, buf: KBox<T>, gfp: Flags) -> Result<(), (Error, KBox<T>)>
    where
        T: OutBuffer,
    {
        let bytes = buf.out_bytes();
        let sg = sg_for(&buf, bytes.as_ptr(), bytes.len());
        self.add(buf, sg, true, gfp)
    }

    /// Hands `buf` to the device to write into.
    ///
    /// Errors as for [`Virtqueue::add_outbuf`].
    pub fn add_inbuf(&mut self, mut buf: KBox<T>, gfp: Flags) -> Result<(), (Error, KBox<T>)>
    where
        T: InBuffer,
    {
        let bytes = buf.in_bytes();
        let (ptr, len) = (bytes.as_mut_ptr().cast_const(), bytes.len());
        let sg = sg_for(&buf, ptr, len);
        self.add(buf, sg, false, gfp)
    }

    /// Lends the page block `buf` carries ([`PageBuffer::page_block`]) to the device, to write.
    ///
    /// The block stays allocated until the buffer comes back from [`Virtqueue::get_buf`] or the
    /// queue is dropped (after the device is reset): the queue owns `buf`, and `T: 'static` means
    /// the block cannot be borrowed from something that goes away earlier.
    ///
    /// On failure (e.g. [`ENOSPC`] if the queue is full, [`EINVAL`] if `buf` carries no block) the
    /// buffer is given back with the error.
    ///
    /// # Examples
    ///
    /// ```
    /// use kernel::{prelude::*, virtio::{PageBlock, PageBuffer, Virtqueue}};
    ///
    /// struct Hint(PageBlock);
    ///
    /// impl PageBuffer for Hint {
    ///     fn page_block(&self) -> Option<&PageBlock> {
    ///         Some(&self.0)
    ///     }
    /// }
    ///
    /// fn hint_one(vq: &mut Virtqueue<'_, Hint>) -> Result {
    ///     let block = PageBlock::alloc_if_free(PageBlock::MAX_ORDER).ok_or(ENOMEM)?;
    ///     let buf = KBox::new(Hint(block), GFP_KERNEL)?;
    ///     vq.add_inbuf_pages(buf, GFP_KERNEL).map_err(|(e, _buf)| e)?;
    ///     vq.kick();
    ///     Ok(())
    /// }
    /// ```
    pub fn add_inbuf_pages(&mut self, buf: KBox<T>, gfp: Flags) -> Result<(), (Error, KBox<T>)>
    where
        T: PageBuffer + 'static,
    {
        let sg = match buf.page_block() {
            Some(block) => {
                let mut sg = bindings::scatterlist::default();
                // SAFETY: `sg` is valid for writes; the block is `2^order` pages in the linear
                // mapping (type invariant of `PageBlock`), at most `PAGE_SIZE << MAX_PAGE_ORDER`
                // bytes, which fits a scatterlist entry.
                unsafe {
                    bindings::virtio_sg_init_page_block(&mut sg, block.as_raw(), block.order())
                };
                Ok(sg)
            }
            None => Err(EINVAL),
        };
        self.add(buf, sg, false, gfp)
    }

    /// Whether the device reaches buffers at their guest-physical addresses, with nothing mapped
    /// for it (no DMA API: no IOMMU, no bounce buffers). See [`Virtqueue::hint_pages`].
    pub fn addresses_guest_memory(&self) -> bool {
        // SAFETY: The queue is live.
        unsafe { bindings::virtio_vq_addresses_guest_memory(self.as_raw()) }
    }

    /// Tells the device where a free page block is, for it to treat as free (a balloon's free
    /// page hint), without lending it: `block` stays the caller's, who may free it at any time,
    /// even before `token` comes back from [`Virtqueue::get_buf`].
    ///
    /// Only for a device that addresses guest memory directly ([`EOPNOTSUPP`] otherwise, with
    /// `token` given back; see [`Virtqueue::addresses_guest_memory`]): such a device reaches all
    /// of guest memory anyway, so the descriptor gives it no access it did not have, and without
    /// a mapping nothing is undone later that could touch the block once it is freed. The device
    /// is not to write hinted memory: the virtio specification lets the driver release hinted
    /// pages before the device has used their buffer.
    ///
    /// # Examples
    ///
    /// ```
    /// use kernel::{prelude::*, virtio::{PageBlock, Virtqueue}};
    ///
    /// /// Hints `block` if the device allows it; the caller keeps the block either way.
    /// fn hint(vq: &mut Virtqueue<'_, ()>, block: &PageBlock) -> Result {
    ///     vq.hint_pages(block, KBox::new((), GFP_KERNEL)?, GFP_KERNEL)
    ///         .map_err(|(e, _token)| e)?;
    ///     vq.kick();
    ///     Ok(())
    /// }
    /// ```
    pub fn hint_pages(
        &mut self,
        block: &PageBlock,
        token: KBox<T>,
        gfp: Flags,
    ) -> Result<(), (Error, KBox<T>)> {
        if !self.addresses_guest_memory() {
            return Err((EOPNOTSUPP, token));
        }
        let mut sg = bindings::scatterlist::default();
        // SAFETY: `sg` is valid for writes; the block is `2^order` pages in the linear mapping
        // (type invariant of `PageBlock`), at most `PAGE_SIZE << MAX_PAGE_ORDER` bytes, which
        // fits a scatterlist entry.
        unsafe { bindings::virtio_sg_init_page_block(&mut sg, block.as_raw(), block.order()) };
        let raw = KBox::into_raw(token);
        // SAFETY: The queue is live and used exclusively; `sg` is one valid entry. Without a
        // mapping the ring only records the block's guest-physical address, and neither adding
        // nor detaching the buffer touches the block; `raw` is non-NULL and owned by the queue
        // from now on.
        let ret = unsafe {
            bindings::virtqueue_add_inbuf(self.as_raw(), &mut sg, 1, raw.cast(), gfp.as_raw())
        };
        match to_result(ret) {
            Ok(()) => Ok(()),
            // SAFETY: The queue did not take `raw`, which came from `KBox::into_raw` above.
            Err(e) => Err((e, unsafe { KBox::from_raw(raw) })),
        }
    }

    /// Queues in-buffers described by a scatterlist the caller owns, with `token` to identify
    /// them when they come back.
    ///
    /// # Safety
    ///
    /// `sg` must point to `nents` valid, chained scatterlist entries describing memory the device
    /// may write, and that memory must stay valid (and not be accessed by the CPU) until `token`
    /// comes back from [`Virtqueue::get_buf`] or the queue is dropped.
    pub unsafe fn add_inbuf_sg(
        &mut self,
        sg: *mut bindings::scatterlist,
        nents: u32,
        token: KBox<T>,
        gfp: Flags,
    ) -> Result<(), (Error, KBox<T>)> {
        let token = KBox::into_raw(token);
        // SAFETY: The queue is live and used exclusively; `sg` is valid per the safety
        // requirements; `token` is non-NULL and owned by the queue from now on.
        let ret = unsafe {
            bindings::virtqueue_add_inbuf(self.as_raw(), sg, nents, token.cast(), gfp.as_raw())
        };
        match to_result(ret) {
            Ok(()) => Ok(()),
            // SAFETY: The queue did not take `token`, which came from `KBox::into_raw` above.
            Err(e) => Err((e, unsafe { KBox::from_raw(token) })),
        }
    }

    /// Lends the memory described by `sgl` to the device as in-buffers and waits with `wait`
    /// until the device gives it back; returns `token`, which identified it in the queue.
    ///
    /// `wait` is called until it returns `token`: it typically sleeps until the queue signals a
    /// used buffer and takes it with [`Virtqueue::get_buf`]. The queue must have nothing else in
    /// flight ([`EBUSY`] otherwise), so the first buffer back is `sgl`'s.
    ///
    /// `wait` returns `None` to give up on a device that keeps the memory: a driver that is
    /// going away (unbind, freeze) and cannot wait any longer. Only a stopped device is sure to
    /// let go of the memory, so the device is stopped then (broken and reset: it is dead until
    /// it is set up anew), the buffer is detached from the queue (which undoes any DMA mapping of
    /// it), and the call fails with [`ETIMEDOUT`], giving `token` back: only then is the memory
    /// the caller's again. A device that breaks the queue itself is stopped the same way.
    ///
    /// This is how a balloon reports free pages, which it borrows from the page allocator for the
    /// duration of the report only. Sleeps.
    pub fn lend_inbuf_sg<S: LentScatterList + ?Sized>(
        &mut self,
        sgl: &S,
        token: KBox<T>,
        gfp: Flags,
        mut wait: impl FnMut(&mut Self) -> Option<KBox<T>>,
    ) -> Result<KBox<T>, (Error, Option<KBox<T>>)> {
        let nents = sgl.sg_nents();
        if nents == 0 {
            return Err((EINVAL, Some(token)));
        }
        if self.num_free() != self.size() {
            return Err((EBUSY, Some(token)));
        }
        let raw = KBox::into_raw(token);
        // SAFETY: The queue is live and used exclusively; `sgl` describes `nents` entries of
        // device-writable memory valid while it is borrowed, which lasts until the device has
        // given the buffer back or has been reset below; `raw` is non-NULL and owned by the queue
        // from now on.
        let ret = unsafe {
            bindings::virtqueue_add_inbuf(
                self.as_raw(),
                sgl.sg_raw(),
                nents,
                raw.cast(),
                gfp.as_raw(),
            )
        };
        if let Err(e) = to_result(ret) {
            // SAFETY: The queue did not take `raw`, which came from `KBox::into_raw` above.
            return Err((e, Some(unsafe { KBox::from_raw(raw) })));
        }
        self.kick();
        loop {
            let Some(buf) = wait(self) else {
                // The device may still write to the memory: stopping it ends that, detaching the
                // buffer unmaps it, and the borrow of `sgl` may end only after both.
                let mut lent = None;
                while let Some(token) = self.detach_unused() {
                    if core::ptr::eq(core::ptr::from_ref::<T>(&token), raw) {
                        lent = Some(token);
                    }
                }
                return Err((ETIMEDOUT, lent));
            };
            if core::ptr::eq(core::ptr::from_ref::<T>(&buf), raw) {
                return Ok(buf);
            }
            // A buffer `wait` itself queued: not the one `sgl` is lent with.
            drop(buf);
        }
    }

    /// Takes back a buffer the device has used, with the number of bytes it wrote into it.
    pub fn get_buf(&mut self) -> Option<(KBox<T>, u32)> {
        let mut len = 0u32;
        // SAFETY: The queue is live and used exclusively; `len` is valid for writes.
        let token = unsafe { bindings::virtqueue_get_buf(self.as_raw(), &mut len) };
        if token.is_null() {
            return None;
        }
        // SAFETY: By the type invariants every token is a `KBox<T>` from `into_raw`, handed back
        // by the queue exactly once.
        Some((unsafe { KBox::from_raw(token.cast::<T>()) }, len))
    }

    /// Notifies the device of new buffers, if it wants to be (`virtqueue_kick()`).
    ///
    /// Returns `false` if the device failed (the queue is broken).
    pub fn kick(&mut self) -> bool {
        // SAFETY: The queue is live and used exclusively.
        unsafe { bindings::virtqueue_kick(self.as_raw()) }
    }

    /// First half of [`Virtqueue::kick`]: whether the device needs a notification.
    pub fn kick_prepare(&mut self) -> bool {
        // SAFETY: The queue is live and used exclusively.
        unsafe { bindings::virtqueue_kick_prepare(self.as_raw()) }
    }

    /// Second half of [`Virtqueue::kick`]: notifies the device; may be done without the lock that
    /// serialises the queue's other operations.
    pub fn notify(&self) -> bool {
        // SAFETY: The queue is live; notifying is allowed concurrently with other operations.
        unsafe { bindings::virtqueue_notify(self.as_raw()) }
    }

    /// The ring size: how many descriptors the queue has.
    pub fn size(&self) -> u32 {
        // SAFETY: The queue is live.
        unsafe { bindings::virtqueue_get_vring_size(self.as_raw()) }
    }

    /// How many descriptors are free.
    pub fn num_free(&self) -> u32 {
        // SAFETY: The queue is live; `num_free` only changes under `&mut self`.
        unsafe { (*self.as_raw()).num_free }
    }

    /// The index the transport gave the queue (absent queues are not counted).
    pub fn index(&self) -> u32 {
        // SAFETY: The queue is live; `index` is set at creation.
        unsafe { (*self.as_raw()).index }
    }

    /// Asks the device not to signal used buffers (a hint).
    pub fn disable_cb(&mut self) {
        // SAFETY: The queue is live and used exclusively.
        unsafe { bindings::virtqueue_disable_cb(self.as_raw()) }
    }

    /// Asks the device to signal used buffers again.
    ///
    /// Returns `false` if there are used buffers already: the caller should process them, as no
    /// callback may come for them.
    pub fn enable_cb(&mut self) -> bool {
        // SAFETY: The queue is live and used exclusively.
        unsafe { bindings::virtqueue_enable_cb(self.as_raw()) }
    }

    /// Whether the queue is broken (the device failed or was reset).
    pub fn is_broken(&self) -> bool {
        // SAFETY: The queue is live.
        unsafe { bindings::virtqueue_is_broken(self.as_raw()) }
    }
}

impl<T> Virtqueue<'_, T> {
    /// Takes a buffer still queued off the queue, unmapping it; `None` once there is none.
    ///
    /// Stops the device first if that was not done yet: only a stopped device no longer uses
    /// the buffers.
    fn detach_unused(&mut self) -> Option<KBox<T>> {
        self.set.stop.stop();
        // SAFETY: The queue is live (it is deleted only when `self.set` goes) and the device is
        // stopped.
        let token = unsafe { bindings::virtqueue_detach_unused_buf(self.as_raw()) };
        // SAFETY: By the type invariants a token is a `KBox<T>`, handed back once.
        NonNull::new(token).map(|t| unsafe { KBox::from_raw(t.as_ptr().cast::<T>()) })
    }
}

impl<'a> Device<device::Core<'a>> {
    /// Creates the device's virtqueues, one per entry of `infos` (`virtio_find_vqs()`).
    ///
    /// `infos` lists every name of the driver's [`Driver::Queue`] once, in position order.
    /// Entries made with [`VirtqueueInfo::absent`] create no queue, as a NULL name does for C
    /// drivers, so that the transport numbers the queues exactly as for the C driver with the
    /// same list. Callbacks are available for the first [`MAX_CALLBACK_QUEUES`] positions.
    ///
    /// The queues live until the driver has dropped them and the bus has stopped the device: on
    /// removal, after [`Driver::freeze`], or when probe fails.
    ///
    /// Returns [`EBUSY`] if the device has queues already, [`EINVAL`] if `Q` is not the driver's
    /// [`Driver::Queue`], if `infos` does not list its names in order or names no queue or asks
    /// for a callback beyond [`MAX_CALLBACK_QUEUES`], or if called outside of probe or restore of
    /// a Rust driver.
    ///
    /// [`Driver::Queue`]: super::Driver::Queue
    /// [`Driver::freeze`]: super::Driver::freeze
    ///
    /// # Examples
    ///
    /// ```
    /// use kernel::{device::Core, prelude::*, virtio::{self, VirtqueueInfo}};
    ///
    /// kernel::virtio_ids! {
    ///     /// The driver's queues (its `virtio::Driver::Queue`).
    ///     enum Queue { Requests, Stats }
    /// }
    ///
    /// fn queues<'a>(
    ///     dev: &'a virtio::Device<Core<'_>>,
    ///     stats: bool,
    /// ) -> Result<(virtio::Virtqueue<'a, [u8; 8]>, Option<virtio::Virtqueue<'a, [u8; 8]>>)> {
    ///     let mut vqs = dev.find_vqs(&[
    ///         VirtqueueInfo::new(Queue::Requests, c"requests"),
    ///         VirtqueueInfo::new_if(stats, Queue::Stats, c"stats"),
    ///     ])?;
    ///     let requests = vqs.take(Queue::Requests)?;
    ///     let stats = if stats { Some(vqs.take(Queue::Stats)?) } else { None };
    ///     Ok((requests, stats))
    /// }
    /// ```
    pub fn find_vqs<'b, Q: Ids>(&'b self, infos: &[VirtqueueInfo<Q>]) -> Result<Virtqueues<'b, Q>> {
        let vdev = self.as_raw();
        // SAFETY: In `Core` context of a Rust virtio driver `priv` is NULL or our `DeviceState`,
        // which outlives the callback this is called from.
        let state: &DeviceState = unsafe { DeviceState::from_priv(vdev) }.ok_or(EINVAL)?;

        // The names are the driver's, each at its position: callbacks name queues by position.
        if state.queue_ids != ids::type_of::<Q>()
            || infos.len() != Q::ALL.len()
            || infos
                .iter()
                .enumerate()
                .any(|(i, info)| info.queue.position() != i)
        {
            return Err(EINVAL);
        }
        if !infos.iter().any(|i| i.name.is_some()) {
            return Err(EINVAL);
        }
        // SAFETY: `vdev` is valid; the queue list only changes in `find_vqs`/`del_vqs`, which
        // `Core` context serialises with this.
        let empty = unsafe {
            let head = core::ptr::addr_of_mut!((*vdev).vqs);
            (*head).next == head
        };
        if !empty {
            return Err(EBUSY);
        }

        let mut raw_infos = KVec::with_capacity(infos.len(), GFP_KERNEL)?;
        for (i, info) in infos.iter().enumerate() {
            let callback = if info.callback && info.name.is_some() {
                Some(*state.vq_callbacks.get(i).ok_or(EINVAL)?)
            } else {
                None
            };
            raw_infos.push(
                bindings::virtqueue_info {
                    name: info.name.map_or(core::ptr::null(), |n| n.as_char_ptr()),
                    callback,
                    ctx: false,
                },
                GFP_KERNEL,
            )?;
        }
        let mut raw_vqs = KVec::<*mut bindings::virtqueue>::with_capacity(infos.len(), GFP_KERNEL)?;
        let mut vqs =
            KVec::<Option<NonNull<bindings::virtqueue>>>::with_capacity(infos.len(), GFP_KERNEL)?;
        let mut drains = KVec::<Option<DrainFn>>::with_capacity(infos.len(), GFP_KERNEL)?;
        for _ in infos {
            raw_vqs.push(core::ptr::null_mut(), GFP_KERNEL)?;
            vqs.push(None, GFP_KERNEL)?;
            drains.push(None, GFP_KERNEL)?;
        }
        // Allocated before the queues exist, so that nothing can fail once they do.
        let mut current = state.queues.lock();

        // The device is set up anew: the queues about to be made are not stopped yet. (Any
        // earlier ones are gone, as the list is empty.)
        state.stop.rearm();
        // SAFETY: `vdev` is valid; both arrays hold `infos.len()` entries; names are `'static`.
        to_result(unsafe {
            bindings::virtio_find_vqs(
                vdev,
                infos.len().try_into()?,
                raw_vqs.as_mut_ptr(),
                raw_infos.as_mut_ptr(),
                core::ptr::null_mut(),
            )
        })?;
        for (vq, raw) in vqs.iter_mut().zip(raw_vqs.iter()) {
            *vq = NonNull::new(*raw);
        }

        // INVARIANT: The device's own stop record and the queues just made, none taken yet.
        let set = Arc::pin_init(
            pin_init!(VirtqueueSet {
                vdev,
                stop: state.stop.clone(),
                vqs: raw_vqs,
                drains <- new_spinlock!(drains, "virtio::VirtqueueSet::drains"),
            }),
            GFP_KERNEL,
        );
        let set = match set {
            Ok(set) => set,
            Err(e) => {
                // No set to delete them: undo `virtio_find_vqs()` here.
                state.stop.stop();
                // SAFETY: `vdev` is valid, stopped, and its queues were made just now and are
                // used by nobody.
                unsafe { DeviceStop::delete_queues(vdev) };
                return Err(e);
            }
        };
        // The bus holds on to the queues until it stops the device.
        *current = Some(set.clone());
        drop(current);
        // INVARIANT: The queues exist until `set` (and every queue taken out) is dropped.
        Ok(Virtqueues {
            set,
            vqs,
            _p: PhantomData,
        })
    }
}

#[macros::kunit_tests(rust_kernel_virtio)]
mod tests {
    use super::*;

    /// Bytes that are not inside the buffer itself: a buffer must not be able to hand them over.
    struct Elsewhere(&'static [u8]);

    impl OutBuffer for Elsewhere {
        fn out_bytes(&self) -> &[u8] {
            self.0
        }
    }

    static ELSEWHERE: [u8; 8] = [0; 8];

    #[test]
    fn sg_covers_only_bytes_inside_the_box() -> Result {
        let b = KBox::new([0u8; 16], GFP_KERNEL)?;
        let p = b.as_ptr();

        let sg = sg_for(&b, p, 16)?;
        assert_eq!(sg.length, 16);
        let sg = sg_for(&b, p.wrapping_add(8), 8)?;
        assert_eq!(sg.length, 8);

        assert_eq!(sg_for(&b, p, 17).err(), Some(EINVAL));
        assert_eq!(sg_for(&b, p.wrapping_add(16), 1).err(), Some(EINVAL));
        assert_eq!(sg_for(&b, p, 0).err(), Some(EINVAL));
        assert_eq!(sg_for(&b, p.wrapping_sub(1), 4).err(), Some(EINVAL));

        let e = KBox::new(Elsewhere(&ELSEWHERE), GFP_KERNEL)?;
        let bytes = e.out_bytes();
        assert_eq!(sg_for(&e, bytes.as_ptr(), bytes.len()).err(), Some(EINVAL));
        Ok(())
    }

    crate::virtio_ids! {
        enum Queue { Requests, Stats, FreePage }
    }

    #[test]
    fn absent_queues_have_no_name_and_no_callback() {
        let absent = VirtqueueInfo::new_if(false, Queue::Stats, c"stats");
        assert!(absent.name.is_none() && !absent.callback);
        assert!(absent.queue == Queue::Stats);
        let present = VirtqueueInfo::new_if(true, Queue::Stats, c"stats");
        assert_eq!(present.name.map(|n| n.to_bytes()), Some(&b"stats"[..]));
        assert!(present.callback);
        assert!(!VirtqueueInfo::without_callback(Queue::FreePage, c"free_page_vq").callback);
    }

    #[test]
    fn queue_names_stand_for_their_positions() {
        assert_eq!(Queue::Requests.position(), 0);
        assert_eq!(Queue::FreePage.position(), 2);
        assert!(Queue::at(1) == Some(Queue::Stats));
        assert!(Queue::at(3).is_none());
        assert!(super::super::NoIds::at(0).is_none());
    }

    /// A made-up transport for the bus side of queues and work: `find_vqs` hands out addresses it
    /// never expects to be used (no queue is taken), and every call is counted.
    #[repr(C)]
    struct FakeTransport {
        vdev: bindings::virtio_device,
        ops: bindings::virtio_config_ops,
        /// Stand-ins for queues, by position; only their addresses are used.
        queues: [u64; 4],
        found: usize,
        deleted: usize,
        resets: usize,
        status: u8,
    }

    impl FakeTransport {
        /// Fills in the transport operations of the zeroed `FakeTransport` at `raw` (the
        /// status ones as given) and returns its `vdev`.
        ///
        /// # Safety
        ///
        /// `raw` must point to a live, zeroed `FakeTransport` that nothing else uses meanwhile;
        /// `get_status` and `set_status` must be safe to call with its `vdev`.
        unsafe fn init(
            raw: *mut Self,
            get_status: Option<unsafe extern "C" fn(*mut bindings::virtio_device) -> u8>,
            set_status: Option<unsafe extern "C" fn(*mut bindings::virtio_device, u8)>,
        ) -> *mut bindings::virtio_device {
            // SAFETY: Per the safety requirements; the reference does not outlive this block.
            unsafe {
                let t = &mut *raw;
                t.ops.find_vqs = Some(fake_find_vqs);
                t.ops.del_vqs = Some(fake_del_vqs);
                t.ops.reset = Some(fake_reset);
                t.ops.synchronize_cbs = Some(fake_synchronize_cbs);
                t.ops.get_status = get_status;
                t.ops.set_status = set_status;
                t.vdev.config = &raw const t.ops;
                bindings::INIT_LIST_HEAD(&raw mut t.vdev.vqs);
                bindings::__spin_lock_init(
                    &raw mut t.vdev.vqs_list_lock,
                    c"FakeTransport::vqs_list_lock".as_char_ptr(),
                    crate::static_lock_class!().as_ptr(),
                );
                &raw mut t.vdev
            }
        }
    }

    // SAFETY: Every field is an integer, a pointer, an optional function pointer or made of them.
    unsafe impl Zeroable for FakeTransport {}

    /// # Safety
    ///
    /// `vdev` must be the `vdev` of a live `FakeTransport` that nothing else uses meanwhile.
    unsafe fn fake<'a>(vdev: *mut bindings::virtio_device) -> &'a mut FakeTransport {
        // SAFETY: `vdev` is the first field of a live `repr(C)` `FakeTransport`.
        unsafe { &mut *vdev.cast::<FakeTransport>() }
    }

    /// # Safety
    ///
    /// As [`fake`]; `vqs` and `infos` must hold `nvqs` entries.
    unsafe extern "C" fn fake_find_vqs(
        vdev: *mut bindings::virtio_device,
        nvqs: crate::ffi::c_uint,
        vqs: *mut *mut bindings::virtqueue,
        infos: *mut bindings::virtqueue_info,
        _desc: *mut bindings::irq_affinity,
    ) -> crate::ffi::c_int {
        // SAFETY: Per the safety requirements.
        let t = unsafe { fake(vdev) };
        t.found += 1;
        for i in 0..(nvqs as usize).min(t.queues.len()) {
            // SAFETY: `i < nvqs`, within both arrays per the safety requirements. A nameless
            // entry gets no queue, as on the real transports.
            unsafe {
                *vqs.add(i) = if (*infos.add(i)).name.is_null() {
                    core::ptr::null_mut()
                } else {
                    (&raw mut t.queues[i]).cast()
                };
            }
        }
        0
    }

    /// # Safety
    ///
    /// As [`fake`].
    unsafe extern "C" fn fake_del_vqs(vdev: *mut bindings::virtio_device) {
        // SAFETY: Per the safety requirements.
        unsafe { fake(vdev) }.deleted += 1;
    }

    /// # Safety
    ///
    /// As [`fake`].
    unsafe extern "C" fn fake_reset(vdev: *mut bindings::virtio_device) {
        // SAFETY: Per the safety requirements.
        unsafe { fake(vdev) }.resets += 1;
    }

    extern "C" fn fake_synchronize_cbs(_vdev: *mut bindings::virtio_device) {}

    extern "C" fn no_callback(_vq: *mut bindings::virtqueue) {}

    /// What the last work item run was: its position plus one.
    static RAN: crate::sync::atomic::Atomic<usize> = crate::sync::atomic::Atomic::new(0);

    /// # Safety
    ///
    /// None beyond `DeviceState`'s: it only records `id`.
    unsafe fn record_work(_state: &DeviceState, id: usize) {
        RAN.store(id + 1, crate::sync::atomic::Release);
    }

    crate::virtio_ids! {
        enum Work { Size, Stats }
    }

    crate::virtio_ids! {
        enum Another { Size }
    }

    /// Runs `f` on a made-up device with the bus's state attached, as a driver whose queues are
    /// named [`Queue`] and whose work is named [`Work`] sees it in probe; returns the transport's
    /// counts afterwards: queue sets found, deleted, resets.
    fn with_transport(
        f: impl FnOnce(&Device<device::Core<'_>>, &DeviceState) -> Result,
    ) -> Result<(usize, usize, usize)> {
        let raw = KBox::into_raw(KBox::init(
            pin_init::init_zeroed::<FakeTransport>(),
            GFP_KERNEL,
        )?);
        // SAFETY: `raw` is a live, zeroed allocation of ours until it is rebuilt below; nothing
        // calls the status operations, which it has none of.
        let vdev = unsafe { FakeTransport::init(raw, None, None) };
        let state = KBox::pin_init(
            DeviceState::new::<Queue, Work>(vdev, [no_callback; MAX_CALLBACK_QUEUES], record_work),
            GFP_KERNEL,
        );
        let r = state.and_then(|state| {
            // SAFETY: `Device` is a transparent wrapper of `struct virtio_device`; the made-up
            // device stands for one in probe for as long as `f` runs.
            let dev = unsafe { &*vdev.cast::<Device<device::Core<'_>>>() };
            let r = f(dev, &state);
            // The state goes first, as after a driver's removal.
            drop(state);
            r
        });
        // SAFETY: `raw` came from `KBox::into_raw` and nothing refers to it any more.
        let t = unsafe { KBox::from_raw(raw) };
        r.map(|()| (t.found, t.deleted, t.resets))
    }

    #[test]
    fn queues_are_found_only_by_the_drivers_names_in_order() -> Result {
        let (found, deleted, _) = with_transport(|dev, _state| {
            assert_eq!(
                dev.find_vqs(&[VirtqueueInfo::new(Another::Size, c"a")])
                    .err(),
                Some(EINVAL)
            );
            let out_of_order = [
                VirtqueueInfo::new(Queue::Stats, c"stats"),
                VirtqueueInfo::new(Queue::Requests, c"requests"),
                VirtqueueInfo::absent(Queue::FreePage),
            ];
            assert_eq!(dev.find_vqs(&out_of_order).err(), Some(EINVAL));
            let short = [VirtqueueInfo::new(Queue::Requests, c"requests")];
            assert_eq!(dev.find_vqs(&short).err(), Some(EINVAL));
            Ok(())
        })?;
        // Refused before the transport was asked.
        assert_eq!((found, deleted), (0, 0));
        Ok(())
    }

    #[test]
    fn the_bus_not_a_queue_stops_the_device() -> Result {
        let counts = with_transport(|dev, state| {
            let t = |state: &DeviceState| {
                // SAFETY: The made-up transport is alive while `state` is.
                let t = unsafe { fake(state.vdev) };
                (t.found, t.deleted, t.resets)
            };
            let vqs = dev.find_vqs(&[
                VirtqueueInfo::new(Queue::Requests, c"requests"),
                VirtqueueInfo::absent(Queue::Stats),
                VirtqueueInfo::without_callback(Queue::FreePage, c"free_page_vq"),
            ])?;
            assert!(vqs.has(Queue::Requests) && vqs.has(Queue::FreePage));
            assert!(!vqs.has(Queue::Stats));
            drop(vqs);
            // The driver let go of its queues: the device keeps running, and keeps them, until
            // the bus stops it.
            assert_eq!(t(state), (1, 0, 0));
            // What freeze does once the driver's `freeze` returned.
            state.stop_queues();
            assert_eq!(t(state), (1, 1, 1));
            state.stop_queues();
            assert_eq!(t(state), (1, 1, 1));
            Ok(())
        })?;
        // Removing the state (a failed probe, say) has nothing left to stop.
        assert_eq!(counts, (1, 1, 1));
        Ok(())
    }

    /// The made-up device the leaking driver below is bound to, by address (0: none).
    static LEAKING_ON: crate::sync::atomic::Atomic<usize> = crate::sync::atomic::Atomic::new(0);

    /// When the leaked registration was torn down: the device's resets by then, plus one (0: not
    /// torn down).
    static REVOKED_AT: crate::sync::atomic::Atomic<usize> = crate::sync::atomic::Atomic::new(0);

    /// The registration the driver leaked, by address, for the test to free once it is done.
    static LEAKED: crate::sync::atomic::Atomic<usize> = crate::sync::atomic::Atomic::new(0);

    /// # Safety
    ///
    /// `LEAKING_ON` must hold the address of a live `FakeTransport` that nothing else uses
    /// meanwhile.
    unsafe fn revoke_leaked(_e: *const crate::binding::Enrolment) {
        let vdev = LEAKING_ON.load(crate::sync::atomic::Acquire) as *mut bindings::virtio_device;
        // SAFETY: Per the safety requirements.
        let resets = unsafe { fake(vdev) }.resets;
        REVOKED_AT.store(resets + 1, crate::sync::atomic::Release);
    }

    /// A driver that registers something through its binding and forgets it (`mem::forget`),
    /// which safe code may do: only the bus can end it.
    struct Leaking;

    static LEAKING_IDS: crate::device_id::IdArray<super::super::DeviceId, (), 1> =
        crate::device_id::IdArray::new_without_index([super::super::DeviceId::new(0)]);

    impl super::super::Driver for Leaking {
        type Data<'bound> = ();
        const ID_TABLE: super::super::IdTable = &LEAKING_IDS;
        const FEATURES: &'static [u32] = &[];
        type Queue = Queue;
        type Work = Work;

        fn probe<'bound>(
            _dev: &'bound Device<device::Core<'_>>,
            binding: crate::binding::Binding<'bound>,
        ) -> impl PinInit<(), Error> + 'bound {
            // SAFETY: `revoke_leaked` only reads the made-up device, which the test keeps alive
            // and unshared until the binding has ended.
            let init = unsafe { crate::binding::Enrolment::new(revoke_leaked) };
            let leak = move || -> Result {
                let e = KBox::pin_init(init, GFP_KERNEL)?;
                e.as_ref().enrol(binding)?;
                LEAKED.store(
                    core::ptr::from_ref(&*e) as usize,
                    crate::sync::atomic::Release,
                );
                core::mem::forget(e);
                Ok(())
            };
            leak()
        }
    }

    #[test]
    fn a_leaked_registration_ends_with_the_binding_before_the_device_stops() -> Result {
        type Bus = super::super::Adapter<Leaking>;

        /// # Safety
        ///
        /// As [`fake`].
        unsafe extern "C" fn get_status(vdev: *mut bindings::virtio_device) -> u8 {
            // SAFETY: Per the safety requirements.
            unsafe { fake(vdev) }.status
        }
        /// # Safety
        ///
        /// As [`fake`].
        unsafe extern "C" fn set_status(vdev: *mut bindings::virtio_device, status: u8) {
            // SAFETY: Per the safety requirements.
            unsafe { fake(vdev) }.status = status;
        }

        let raw = KBox::into_raw(KBox::init(
            pin_init::init_zeroed::<FakeTransport>(),
            GFP_KERNEL,
        )?);
        // SAFETY: `raw` is a live allocation of ours until it is rebuilt below; nothing else uses
        // it meanwhile but the bus callbacks called here, one at a time.
        let vdev = unsafe { FakeTransport::init(raw, Some(get_status), Some(set_status)) };
        LEAKING_ON.store(vdev as usize, crate::sync::atomic::Release);
        REVOKED_AT.store(0, crate::sync::atomic::Release);
        LEAKED.store(0, crate::sync::atomic::Release);

        assert_eq!(Bus::probe_callback(vdev), 0);
        let leaked = LEAKED.load(crate::sync::atomic::Acquire);
        assert!(leaked != 0);
        // Bound and live: the registration stands.
        assert_eq!(REVOKED_AT.load(crate::sync::atomic::Acquire), 0);
        // SAFETY: The made-up device is alive, and the bus is not in one of its callbacks.
        let status = unsafe { fake(vdev) }.status;
        assert_eq!(
            u32::from(status) & bindings::VIRTIO_CONFIG_S_DRIVER_OK,
            bindings::VIRTIO_CONFIG_S_DRIVER_OK
        );

        Bus::remove_callback(vdev);
        // Ended by the removal, while the device still ran (no reset yet): what a registration
        // ends may still use the device's queues, as the driver's own teardown does.
        assert_eq!(REVOKED_AT.load(crate::sync::atomic::Acquire), 1);
        // SAFETY: The made-up device is alive; the bus is done with it.
        let resets = unsafe { fake(vdev) }.resets;
        assert_eq!(resets, 1);

        // What the driver core does after `remove`: the data goes.
        // SAFETY: `vdev` is a `struct virtio_device`; `Device` is a transparent wrapper of it.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };
        // SAFETY: `probe_callback` stored a `DriverData` of this type, and nothing else took it.
        drop(unsafe {
            dev.as_ref()
                .drvdata_obtain::<super::super::DriverData<()>>()
        });
        // SAFETY: The enrolment was torn down (`DONE`): nothing refers to it any more, and it
        // came from a `KBox` of this type.
        drop(unsafe { KBox::from_raw(leaked as *mut crate::binding::Enrolment) });
        LEAKING_ON.store(0, crate::sync::atomic::Release);
        // SAFETY: `raw` came from `KBox::into_raw` and nothing refers to it any more.
        drop(unsafe { KBox::from_raw(raw) });
        Ok(())
    }

    #[test]
    fn work_is_queued_by_the_drivers_names_only() -> Result {
        with_transport(|dev, state| {
            let dev: &Device<device::Bound> = dev;
            // Not live: nothing is queued before the data is published.
            assert!(!dev.queue_work(Work::Stats));
            let mut data = 0u8;
            state.publish((&raw mut data).cast());
            assert!(!dev.queue_work(Another::Size));
            RAN.store(0, crate::sync::atomic::Release);
            assert!(dev.queue_work(Work::Stats));
            for _ in 0..1000 {
                if RAN.load(crate::sync::atomic::Acquire) != 0 {
                    break;
                }
                crate::time::delay::fsleep(crate::time::Delta::from_millis(1));
            }
            assert_eq!(RAN.load(crate::sync::atomic::Acquire), 2);
            state.stop_work();
            state.unpublish();
            Ok(())
        })?;
        Ok(())
    }
}
