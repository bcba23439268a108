// SPDX-License-Identifier: GPL-2.0

//! The balloon's size: inflating (fill), deflating (leak), and the size work that steps towards
//! the host's target.

use kernel::{
    balloon::{BalloonBlock, DeflatedPage},
    device::Bound,
    prelude::*,
    time::{delay::fsleep, Delta},
    virtio,
};

use crate::{
    batch::{self, MAX_BUFFERS_IN_FLIGHT, STEP_PFNS_MAX},
    device::RBalloon,
    host::{Balloon, Inner},
    module_parameters,
    pfn::{Geometry, PAGES_PER_PAGE},
    requests::Direction,
    target::{self, Step},
    Work, BLOCK_PAGES, MAX_GUEST_PAGES, OUT_OF_PUFF_DELAY, SEND_BUFFERS, WAKEUP_SIGNAL_ADJUST,
};

/// Deflates by up to `num` balloon pages, at most one step; returns how many (the C
/// `leak_balloon()`, batched).
pub(crate) fn leak(b: &Balloon<'_>, num: usize) -> usize {
    let mut inner = b.lock.lock();
    if inner.queues.is_none() {
        // Between freeze and restore the host cannot be told, so nothing may leave the balloon.
        return 0;
    }
    // We can't release more pages than taken.
    let num = num.min(STEP_PFNS_MAX).min(inner.num_pages as usize);
    inner.pfns.start(batch::buffers_for(num, Geometry::KERNEL));
    // Bounded by the room left, so that no page is ever released before the host was told.
    let mut guest_pages = num
        .div_ceil(PAGES_PER_PAGE as usize)
        .min(inner.deflated.capacity() - inner.deflated.len())
        .min(inner.pfns.guest_page_room());
    // One request buffer's worth at a time: the balloon core holds its page list lock, with
    // interrupts off, while it takes the pages out.
    // Full buffers go to the host [`SEND_BUFFERS`] at a time, so that the host reads them while
    // the next are taken out (`Host::send`).
    let mut done = 0;
    let mut told = true;
    while guest_pages != 0 {
        let Inner {
            pfns,
            deflated,
            num_pages,
            ..
        } = &mut *inner;
        let chunk = guest_pages.min(MAX_GUEST_PAGES);
        let got = b.dequeue_many(chunk, |page| {
            // Cannot fail: there is room for `guest_pages` pages.
            let _ = pfns.push_page(page.pfn());
            *num_pages -= PAGES_PER_PAGE;
            // Cannot fail: there is room for `guest_pages` pages.
            let _ = deflated.push_within_capacity(page);
        });
        done += got * PAGES_PER_PAGE as usize;
        if inner.pfns.filled() >= SEND_BUFFERS {
            told &= b.send(&mut inner, Direction::Deflate);
        }
        if got < chunk {
            // The balloon is empty, or the rest is isolated for migration.
            break;
        }
        guest_pages -= chunk;
    }
    // With VIRTIO_BALLOON_F_MUST_TELL_HOST the host must know before the pages are used again:
    // tell it first, release them afterwards.
    told &= b.tell_host(&mut inner, Direction::Deflate);
    if done != 0 && !told {
        // Not every PFN reached the host: put every page back rather than work out which did.
        // The host may think some of them deflated; the guest keeps them unused, which is safe
        // either way, and `actual` stays what the guest holds.
        let Inner {
            deflated,
            num_pages,
            ..
        } = &mut *inner;
        let back = b.enqueue_many(core::iter::from_fn(|| {
            deflated.pop().map(DeflatedPage::keep)
        }));
        *num_pages += back as u32 * PAGES_PER_PAGE;
        dev_warn!(
            b.dev,
            "the host was not told of a deflation: {} pages stay in the balloon\n",
            back
        );
        return 0;
    }
    while let Some(page) = inner.deflated.pop() {
        page.release();
    }
    done
}

impl RBalloon<'_> {
    /// Inflates by up to `num` balloon pages, at most one step; returns how many (the C
    /// `fill_balloon()`, batched).
    pub(crate) fn fill(&self, num: usize) -> usize {
        let mut pages = self.inflating.lock();
        // Whole guest pages, at most a step's worth (which the vector has room for).
        let wanted = num
            .min(STEP_PFNS_MAX)
            .div_ceil(PAGES_PER_PAGE as usize)
            .min(pages.capacity());
        // Whole 2 MiB blocks where single pages would split one anyway (the page allocator has
        // no smaller free pages left), as fast as blocks and as kind to huge pages as single
        // pages; with `blocks=1`, while any block is free, even with smaller ones left.
        let eager = module_parameters::blocks.value();
        let mut blocks = true;
        while pages.len() < wanted {
            let room = wanted - pages.len();
            if blocks && room >= BLOCK_PAGES {
                let block = if eager {
                    BalloonBlock::alloc_if_free(BalloonBlock::HUGE_ORDER)
                } else {
                    BalloonBlock::alloc_if_smallest(BalloonBlock::HUGE_ORDER)
                };
                if let Some(block) = block {
                    for page in block {
                        // Cannot fail: the step has room for the block. Were it to, the page
                        // would just be freed.
                        let _ = pages.push_within_capacity(page);
                    }
                    continue;
                }
                // With `blocks=1` none is free: single pages from now on. By default, a block's
                // worth of single pages, then look again.
                blocks = !eager;
            }
            // Single pages in one go: the holes of fragmented memory first, as C's
            // one-at-a-time allocations take them.
            let want = if blocks { room.min(BLOCK_PAGES) } else { room };
            let got = self.balloon.alloc_pages(want, |page| {
                // Cannot fail: no more than the step's room is asked for. Were it to, the page
                // would just be freed.
                let _ = pages.push_within_capacity(page);
            });
            if got < want {
                if self.puff.lock().allow() {
                    dev_info!(
                        self.dev,
                        "Out of puff! Can't get {} pages\n",
                        PAGES_PER_PAGE
                    );
                }
                // Sleep for at least 1/5 of a second before the work item tries again.
                fsleep(OUT_OF_PUFF_DELAY);
                break;
            }
        }

        let mut inner = self.balloon.lock.lock();
        if inner.queues.is_none() {
            // Only between freeze and restore; the pages go back to the allocator.
            pages.clear();
            return 0;
        }
        inner.pfns.start(MAX_BUFFERS_IN_FLIGHT);
        // One request buffer's worth per call into the balloon core, which holds its page list
        // lock with interrupts off while it puts the pages in. In the order allocated, so that a
        // block's frames fill two whole buffers sent together (blocks come first, and a buffer
        // holds half of one). Full buffers go to the host [`SEND_BUFFERS`] at a time, so that the
        // host discards their pages while the next are put in (`Host::send`).
        let mut done = 0;
        let mut allocated = pages.drain_all().peekable();
        while allocated.peek().is_some() {
            let Inner {
                pfns, num_pages, ..
            } = &mut *inner;
            let mut chunk = 0;
            let enqueued = self.balloon.enqueue_many(core::iter::from_fn(|| {
                if chunk == MAX_GUEST_PAGES {
                    return None;
                }
                let page = allocated.next()?;
                // Cannot fail: at most one step's worth of pages was allocated.
                let _ = pfns.push_page(page.pfn());
                chunk += 1;
                Some(page)
            }));
            if enqueued == 0 {
                // The binding has ended (the balloon takes no page then): the rest is freed.
                break;
            }
            *num_pages += enqueued as u32 * PAGES_PER_PAGE;
            done += enqueued * PAGES_PER_PAGE as usize;
            // Should the host not be told, the pages stay in the balloon all the same: the guest
            // holds them unused and `actual` says so, which is safe whatever the host does.
            if inner.pfns.filled() >= SEND_BUFFERS {
                self.balloon.send(&mut inner, Direction::Inflate);
            }
        }
        self.balloon.tell_host(&mut inner, Direction::Inflate);
        done
    }

    /// The size work (the C `update_balloon_size_func()`).
    pub(crate) fn update_size(&self, dev: &virtio::Device<Bound>) {
        self.process_wakeup_event(WAKEUP_SIGNAL_ADJUST);
        let diff = self.balloon.towards_target();
        let current = self.balloon.lock.lock().num_pages;
        let step = target::next_step(diff, current, STEP_PFNS_MAX);
        // A host that holds requests cannot be told of any change: the balloon stays as it is
        // (no page is taken for a host that will not hear of it, none given back without
        // telling it), and the work does not come back for it: the queue callback brings it
        // back once the host uses a request again (`vq_callback`).
        let answering = self.balloon.catch_up();
        let done = match step {
            _ if !answering => 0,
            Step::Idle => 0,
            Step::Inflate(n) => self.fill(n),
            Step::Deflate(n) => leak(&self.balloon, n),
        };
        if diff != 0 {
            self.balloon.update_balloon_size();
        }
        // Should the host have stalled during this step, look at its queues once more: a
        // request it used between the timeout and `Host::stalled` being set raised no work, and
        // those used after this look will.
        let answering = answering && self.balloon.catch_up();
        // Not done yet: the next run finishes the event. `queue_work()` only refuses, from the
        // running work item, once the driver is going away: then nothing will finish it later.
        if target::remaining(diff, step, done) == 0 || !answering || !dev.queue_work(Work::Size) {
            self.finish_wakeup_event();
        }
    }

    /// Deflates the whole balloon and reports it (the first half of the C `remove_common()`).
    ///
    /// Stops early if the host cannot be told: the pages left then go back to mm only when the
    /// balloon is dropped, after the device was reset (a reset device holds no pages).
    pub(crate) fn deflate_all(&self) {
        loop {
            let answering = self.balloon.catch_up();
            let num = self.balloon.lock.lock().num_pages;
            if num == 0 {
                break;
            }
            if !answering {
                dev_err!(
                    self.dev,
                    "{} balloon pages (4 KiB) not deflated: the host does not answer\n",
                    num
                );
                break;
            }
            if leak(&self.balloon, num as usize) == 0 {
                if self.balloon.isolated_pages() == 0 {
                    // Not migration: the host could not be told (see `leak`).
                    dev_err!(self.dev, "{} balloon pages (4 KiB) not deflated\n", num);
                    break;
                }
                // Every page left is isolated for migration: let the migration finish.
                fsleep(Delta::from_millis(1));
            }
        }
        self.balloon.update_balloon_size();
    }
}
