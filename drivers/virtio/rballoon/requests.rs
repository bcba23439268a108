// SPDX-License-Identifier: GPL-2.0

//! Inflate and deflate requests: PFN buffers queued to the host, several in flight, and the waits
//! until it has used them.

use kernel::{prelude::*, sync::atomic::Release, virtio::Virtqueue};

use crate::{
    batch::{self, PfnBatch},
    host::{Host, HostState, Inner, HOST_TIMEOUT_MS},
    pfn::PfnBuffer,
};

/// One direction's queue with the request buffers and counters that go with it, borrowed from
/// [`Inner`] for a send or a wait.
pub(crate) struct Link<'a, 'b> {
    vq: &'a mut Virtqueue<'b, PfnBuffer>,
    pfns: &'a mut PfnBatch,
    in_flight: &'a mut usize,
    host: &'a mut HostState,
}

impl<'b> Inner<'b> {
    /// The queue for `dir` and what goes with it; `None` between freeze and restore.
    pub(crate) fn link(&mut self, dir: Direction) -> Option<Link<'_, 'b>> {
        let queues = self.queues.as_mut()?;
        let vq = match dir {
            Direction::Inflate => &mut queues.inflate,
            Direction::Deflate => &mut queues.deflate,
        };
        Some(Link {
            vq,
            pfns: &mut self.pfns,
            in_flight: &mut self.in_flight,
            host: &mut self.host,
        })
    }
}

/// How far a request got (see [`Host::tell_page`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Told {
    /// The host used it.
    Yes,
    /// It is with the host, which has not used it (yet): it may still act on it at any time.
    Queued,
    /// The host never got it.
    No,
}

/// Which queue a request goes to.
#[derive(Clone, Copy)]
pub(crate) enum Direction {
    Inflate,
    Deflate,
}

impl Host<'_> {
    /// Queues the filled buffers of `inner.pfns` on `dir`'s queue and notifies the device,
    /// without waiting for it: the host works on them while the caller fills the next buffer, and
    /// [`Host::finish`] waits for them all. Waits for a used buffer only when the queue is full or
    /// the batch would have no empty buffer left for the caller to fill.
    ///
    /// Returns `false` if a request could not be queued: the device is broken, or the host does
    /// not answer (see [`Host::wait_in_flight`]). The caller must call [`Host::finish`] either way.
    pub(crate) fn send(&self, inner: &mut Inner<'_>, dir: Direction) -> bool {
        let Some(mut l) = inner.link(dir) else {
            return false;
        };
        let mut queued = false;
        let mut sent = true;
        while *l.host == HostState::Answering && l.pfns.filled() != 0 {
            if batch::buffers_that_fit(l.vq.num_free()) == 0 {
                if !self.wait_in_flight(&mut l, 1) {
                    sent = false;
                    break;
                }
                continue;
            }
            let Some(buf) = l.pfns.take() else {
                break;
            };
            // The queue had room for this buffer, so this only fails on a broken device.
            if let Err((e, buf)) = l.vq.add_outbuf(buf, GFP_KERNEL) {
                dev_warn!(self.dev, "cannot queue a request: {:?}\n", e);
                l.pfns.give_back(buf);
                sent = false;
                break;
            }
            *l.in_flight += 1;
            queued = true;
        }
        if queued {
            l.vq.kick();
        }
        // Keep an empty buffer for the caller's next PFNs.
        if sent && l.pfns.spare() == 0 && *l.in_flight != 0 {
            sent = self.wait_in_flight(&mut l, 1);
        }
        if *l.host != HostState::Answering || !sent {
            // Nothing more can be sent; the next step starts afresh.
            l.pfns.start(0);
            return false;
        }
        true
    }

    /// Waits until the host has used every buffer [`Host::send`] queued on `dir`. Returns
    /// `false` if it stalled first.
    pub(crate) fn finish(&self, inner: &mut Inner<'_>, dir: Direction) -> bool {
        match inner.link(dir) {
            Some(mut l) => {
                let n = *l.in_flight;
                self.wait_in_flight(&mut l, n)
            }
            None => inner.in_flight == 0,
        }
    }

    /// Takes back `n` used buffers from the queue, waiting at most [`HOST_TIMEOUT_MS`] for each.
    /// If the host lets that pass, it has stalled: no request is sent until it has used those it
    /// holds, which stay with the queue meanwhile ([`Host::catch_up`]). Waiting on would hold the
    /// size work, and the OOM notifier or compaction with it, for as long as the host sleeps.
    pub(crate) fn wait_in_flight(&self, l: &mut Link<'_, '_>, n: usize) -> bool {
        for _ in 0..n.min(*l.in_flight) {
            if *l.host != HostState::Answering {
                return false;
            }
            let Some(buf) = self.wait_used(l.vq) else {
                if l.vq.is_broken() {
                    dev_err!(
                        self.dev,
                        "the request queue is broken: no more requests are sent, and no page \
                         leaves the balloon\n"
                    );
                    *l.host = HostState::Gone;
                } else {
                    dev_warn!(
                        self.dev,
                        "the host has used no request for {} ms: the balloon waits for it, \
                         taking and giving back no page meanwhile\n",
                        HOST_TIMEOUT_MS
                    );
                    *l.host = HostState::Stalled;
                    // Before the size work looks at the queues again (`catch_up`): a buffer
                    // used after that look finds the flag set and brings the work back.
                    self.stalled.store(true, Release);
                }
                return false;
            };
            l.pfns.give_back(buf);
            *l.in_flight -= 1;
        }
        *l.host == HostState::Answering
    }

    /// Sends the PFNs in `inner.pfns` to the host and waits until it has read them (the C
    /// `tell_host()`, for a whole batch of buffers). Returns whether the host used every PFN:
    /// only then may the caller release deflated pages.
    pub(crate) fn tell_host(&self, inner: &mut Inner<'_>, dir: Direction) -> bool {
        let sent = self.send(inner, dir);
        // Also after a failed send: what did go out must come back first.
        let done = self.finish(inner, dir);
        sent && done
    }

    /// Sends the PFNs of the single guest page `pfn` on `dir`, and says how far they got.
    pub(crate) fn tell_page(&self, inner: &mut Inner<'_>, dir: Direction, pfn: usize) -> Told {
        inner.pfns.start(1);
        if inner.pfns.push_page(pfn).is_err() {
            return Told::No;
        }
        let before = inner.in_flight;
        let sent = self.send(inner, dir);
        let queued = inner.in_flight > before;
        match (self.finish(inner, dir) && sent, queued) {
            (true, _) => Told::Yes,
            (false, true) => Told::Queued,
            (false, false) => Told::No,
        }
    }
}
