// SPDX-License-Identifier: GPL-2.0

//! What the balloon core calls the driver for: balloon page migration, deflation on OOM and free
//! page reporting.

use kernel::{
    alloc::flags::GFP_NOWAIT,
    balloon::{
        BalloonMigrate, BalloonOom, BalloonReport, MigrateMode, MigratingPage, ReportedPages,
    },
    prelude::*,
    sync::atomic::{Acquire, Relaxed},
};

use crate::{
    host::{Balloon, Host, HostState},
    module_parameters,
    pfn::PAGES_PER_PAGE,
    requests::{Direction, Told},
    size::leak,
    OOM_NR_PAGES,
};

impl BalloonMigrate for Host<'_> {
    /// The C `virtballoon_migratepage()`: the host learns that `newpage` is inflated and `page`
    /// deflated.
    fn migrate(
        &self,
        newpage: &MigratingPage<'_>,
        page: &MigratingPage<'_>,
        _mode: MigrateMode,
    ) -> Result {
        // Never wait for the balloon lock here: the inflation holding it may be what triggered
        // this compaction.
        if !module_parameters::migration.value() {
            // `migration=0`: the page stays where it is, as if the kernel had no balloon
            // migration. Not `EAGAIN`, which would only make the migration core try again.
            return Err(EBUSY);
        }
        let Some(mut inner) = self.lock.try_lock() else {
            return Err(EAGAIN);
        };
        if inner.queues.is_none() {
            return Err(EAGAIN);
        }
        if inner.host != HostState::Answering {
            // The host could not be told: the page stays where it is.
            return Err(EBUSY);
        }
        // The old page first (C tells the new one first): with MUST_TELL_HOST it may leave the
        // balloon only once the host knows, so unless the host used the request the migration
        // fails and the page stays, which is safe whatever the host does with the request later.
        if self.tell_page(&mut inner, Direction::Deflate, page.pfn()) != Told::Yes {
            return Err(EAGAIN);
        }
        // Then the new one. Once its request is with the host, the host may discard the page
        // whenever it reads it: the migration must then succeed, keeping the page in the
        // balloon, rather than fail and hand it to the page allocator. Only a request the host
        // never got lets it fail; the old page then stays in the balloon, unused, which the
        // host thinks deflated: safe, and told again when it leaves.
        match self.tell_page(&mut inner, Direction::Inflate, newpage.pfn()) {
            Told::Yes | Told::Queued => Ok(()),
            Told::No => Err(EAGAIN),
        }
    }
}

impl BalloonOom for Host<'_> {
    /// The C `virtio_balloon_oom_notify()`: gives back up to 256 balloon pages.
    fn oom_deflate(b: &Balloon<'_>) -> usize {
        let freed = leak(b, OOM_NR_PAGES) / PAGES_PER_PAGE as usize;
        b.update_balloon_size();
        freed
    }
}

impl BalloonReport for Host<'_> {
    /// The C `virtballoon_free_page_report()`: lends the free pages to the host on the reporting
    /// queue until it has processed them, however long that takes (as C) while the driver stays.
    ///
    /// Unlike C, removal and freeze do not wait forever: once the driver is leaving, a host
    /// that still holds the report after [`HOST_TIMEOUT_MS`] (or broke the queue) gets the
    /// device stopped, which is what hands the pages back to mm ([`HostState::Gone`]).
    fn report(b: &Balloon<'_>, pages: &ReportedPages<'_>) -> Result {
        let mut reporting = b.reporting.lock();
        let Some(r) = &mut *reporting else {
            return Err(ENODEV);
        };
        if b.leaving.load(Acquire) {
            return Err(ENODEV);
        }
        let token = r.token.take().ok_or(EBUSY)?;
        match r
            .vq
            .lend_inbuf_sg(pages, token, GFP_NOWAIT, |vq| b.wait_report(vq))
        {
            Ok(token) => {
                r.token = Some(token);
                Ok(())
            }
            Err((e, token)) => {
                r.token = token;
                if e != ETIMEDOUT {
                    dev_warn!(b.dev, "cannot report free pages: {:?}\n", e);
                    return Err(e);
                }
                let bytes: usize = (0..pages.len())
                    .filter_map(|i| pages.get(i))
                    .map(|(_pfn, len)| len)
                    .sum();
                dev_err!(
                    b.dev,
                    "the host did not give back {} KiB of reported free pages: the device is \
                     stopped to take them back\n",
                    bytes / 1024
                );
                // The device is dead until it is set up anew; nothing more is sent.
                b.lock.lock().host = HostState::Gone;
                b.stalled.store(false, Relaxed);
                Err(e)
            }
        }
    }
}
