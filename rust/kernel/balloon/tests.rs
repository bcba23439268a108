// SPDX-License-Identifier: GPL-2.0

//! KUnit tests of the balloon abstraction: migration through the callback, OOM, reporting, page
//! blocks and the end of a binding.

#[macros::kunit_tests(rust_kernel_balloon)]
mod kunit {
    use super::super::{device::*, page::*, *};
    use crate::{
        bindings,
        ffi::{c_int, c_ulong},
        prelude::*,
        sync::atomic::{Atomic, Relaxed},
    };
    use core::ptr::NonNull;

    struct Refuse(Atomic<usize>);

    impl BalloonMigrate for Refuse {
        fn migrate(
            &self,
            _newpage: &MigratingPage<'_>,
            _page: &MigratingPage<'_>,
            _mode: MigrateMode,
        ) -> Result {
            self.0.add(1, Relaxed);
            Err(EAGAIN)
        }
    }

    /// Records what the migration callback was given and answers with `answer`.
    struct Record {
        calls: Atomic<usize>,
        newpfn: Atomic<usize>,
        oldpfn: Atomic<usize>,
        mode: Atomic<u32>,
        answer: Atomic<i32>,
    }

    impl BalloonMigrate for Record {
        fn migrate(
            &self,
            newpage: &MigratingPage<'_>,
            page: &MigratingPage<'_>,
            mode: MigrateMode,
        ) -> Result {
            self.calls.add(1, Relaxed);
            self.newpfn.store(newpage.pfn(), Relaxed);
            self.oldpfn.store(page.pfn(), Relaxed);
            self.mode.store(mode as u32, Relaxed);
            match self.answer.load(Relaxed) {
                0 => Ok(()),
                errno => Err(Error::from_errno(errno)),
            }
        }
    }

    #[test]
    fn migratepage_reaches_the_rust_callback() -> Result {
        crate::binding::scope(|binding| -> Result {
            let b = KBox::pin_init(BalloonDevInfo::new(binding, false, record()), GFP_KERNEL)?;
            // SAFETY: `b` is initialised and only read.
            let hook = unsafe { (*b.as_raw()).migratepage };
            if !cfg!(CONFIG_BALLOON_MIGRATION) {
                assert!(hook.is_none());
                return Ok(());
            }
            let hook = hook.ok_or(EINVAL)?;
            // Two ordinary pages stand in for the isolated page and its replacement: the callback
            // path only looks at their frame numbers.
            let newpage = BalloonPage::alloc().ok_or(ENOMEM)?;
            let page = BalloonPage::alloc().ok_or(ENOMEM)?;
            let call = |mode| {
                // SAFETY: `hook` is the migration callback of the live `b`, and both pages are
                // valid for the duration of the call.
                unsafe { hook(b.as_raw(), newpage.0.as_ptr(), page.0.as_ptr(), mode) }
            };

            assert_eq!(call(bindings::migrate_mode::MIGRATE_SYNC_LIGHT), 0);
            assert_eq!(b.calls.load(Relaxed), 1);
            assert_eq!(b.newpfn.load(Relaxed), newpage.pfn());
            assert_eq!(b.oldpfn.load(Relaxed), page.pfn());
            assert_eq!(b.mode.load(Relaxed), MigrateMode::SyncLight as u32);

            // Errors reach the C core, except "old page deflated, new page not" which is refused.
            b.answer.store(EBUSY.to_errno(), Relaxed);
            assert_eq!(
                call(bindings::migrate_mode::MIGRATE_ASYNC),
                EBUSY.to_errno()
            );
            b.answer.store(ENOENT.to_errno(), Relaxed);
            assert_eq!(
                call(bindings::migrate_mode::MIGRATE_SYNC),
                EAGAIN.to_errno()
            );
            assert_eq!(b.mode.load(Relaxed), MigrateMode::Sync as u32);
            assert_eq!(b.calls.load(Relaxed), 3);

            // A mode C does not define never reaches the driver.
            assert_eq!(call(bindings::migrate_mode(1000)), EINVAL.to_errno());
            assert_eq!(b.calls.load(Relaxed), 3);
            // Nothing was enqueued: the balloon's accounting is untouched by the callback.
            assert_eq!(b.pages(), 0);
            Ok(())
        })
    }

    impl BalloonOom for Record {
        fn oom_deflate(balloon: &BalloonDevInfo<Self>) -> usize {
            balloon.calls.add(1, Relaxed);
            // Give back everything there is, as a driver would up to its per-call limit.
            balloon.dequeue_many(usize::MAX, DeflatedPage::release)
        }
    }

    fn record() -> Record {
        Record {
            calls: Atomic::new(0),
            newpfn: Atomic::new(0),
            oldpfn: Atomic::new(0),
            mode: Atomic::new(u32::MAX),
            answer: Atomic::new(0),
        }
    }

    /// `new_folio_t` for `migrate_pages()`: a fresh page, like a compaction target.
    ///
    /// # Safety
    ///
    /// None: `unsafe` because C calls it through a pointer. The arguments are not used.
    #[cfg(CONFIG_BALLOON_MIGRATION)]
    unsafe extern "C" fn new_folio(
        _src: *mut bindings::folio,
        _private: c_ulong,
    ) -> *mut bindings::folio {
        // SAFETY: No preconditions. An order-0 page is its own folio, hence the cast.
        unsafe { bindings::balloon_page_alloc() }.cast()
    }

    /// Migrates `page`, an inflated page of `b`, the way compaction does: isolate it through its
    /// movable operations, then `migrate_pages()` it; puts it back if that fails.
    #[cfg(CONFIG_BALLOON_MIGRATION)]
    fn compact_one(b: &BalloonDevInfo<Record>, page: NonNull<bindings::page>) -> Result<c_int> {
        with_page_list(|head| {
            // SAFETY: `page` is in the balloon, hence valid; isolation takes its own reference.
            if !unsafe { bindings::isolate_movable_ops_page(page.as_ptr(), 0) } {
                return Err(EBUSY);
            }
            assert_eq!(b.isolated_pages(), 1);
            // The page is isolated and in the balloon count, but not on its list.
            assert_eq!(b.pages(), 1);
            // SAFETY: The `lru` of an isolated page belongs to the isolator.
            unsafe { bindings::balloon_list_push(head, page.as_ptr()) };
            // SAFETY: `head` is a list of isolated movable pages; `new_folio` allocates targets.
            let ret = unsafe {
                bindings::migrate_pages(
                    head,
                    Some(new_folio),
                    None,
                    0,
                    bindings::migrate_mode::MIGRATE_SYNC,
                    bindings::migrate_reason_MR_COMPACTION,
                    core::ptr::null_mut(),
                )
            };
            if ret != 0 {
                // SAFETY: `head` holds the pages `migrate_pages()` could not migrate.
                unsafe { bindings::putback_movable_pages(head) };
            }
            Ok(ret)
        })
    }

    #[test]
    fn compaction_migrates_through_the_callback() -> Result {
        crate::binding::scope(|binding| -> Result {
            #[cfg(CONFIG_BALLOON_MIGRATION)]
            {
                let b = KBox::pin_init(BalloonDevInfo::new(binding, false, record()), GFP_KERNEL)?;

                // The driver accepts: the new page replaces the old one in the balloon.
                let page = b.alloc_page().ok_or(ENOMEM)?;
                let raw = page.0;
                let pfn = b.enqueue(page)?;
                assert_eq!(compact_one(&b, raw)?, 0);
                assert_eq!(b.calls.load(Relaxed), 1);
                assert_eq!(b.oldpfn.load(Relaxed), pfn);
                // `migrate_pages()` in sync mode first tries everything in async mode, in one
                // batch.
                assert_eq!(b.mode.load(Relaxed), MigrateMode::Async as u32);
                let newpfn = b.newpfn.load(Relaxed);
                assert!(newpfn != pfn);
                assert_eq!(b.pages(), 1);
                assert_eq!(b.isolated_pages(), 0);
                let page = b.dequeue().ok_or(EINVAL)?;
                assert_eq!(page.pfn(), newpfn);
                page.release();

                // The driver refuses: the old page goes back to the balloon list.
                b.answer.store(EBUSY.to_errno(), Relaxed);
                let page = b.alloc_page().ok_or(ENOMEM)?;
                let raw = page.0;
                let pfn = b.enqueue(page)?;
                assert!(compact_one(&b, raw)? != 0);
                assert!(b.calls.load(Relaxed) >= 2);
                assert_eq!(b.oldpfn.load(Relaxed), pfn);
                assert_eq!(b.pages(), 1);
                assert_eq!(b.isolated_pages(), 0);
                let page = b.dequeue().ok_or(EINVAL)?;
                assert_eq!(page.pfn(), pfn);
                page.release();
                assert_eq!(b.pages(), 0);
            }
            Ok(())
        })
    }

    #[test]
    fn oom_notifier_deflates() -> Result {
        crate::binding::scope(|binding| -> Result {
            let b = KBox::pin_init(BalloonDevInfo::new(binding, false, record()), GFP_KERNEL)?;
            b.register_oom_notifier(80)?;
            assert_eq!(b.register_oom_notifier(80), Err(EBUSY));
            b.enqueue(b.alloc_page().ok_or(ENOMEM)?)?;
            b.enqueue(b.alloc_page().ok_or(ENOMEM)?)?;

            // Call the notifier the way `out_of_memory()` does, without running out of memory.
            let nb = b.oom.as_raw();
            // SAFETY: `nb` is initialised and registered, so only read by the notifier chain.
            let call = unsafe { (*nb).notifier_call }.ok_or(EINVAL)?;
            let mut freed: c_ulong = 5;
            // SAFETY: `nb` is the notifier block of the live `b` and `freed` a valid counter.
            let ret = unsafe { call(nb, 0, (&raw mut freed).cast()) };
            assert_eq!(ret, bindings::NOTIFY_OK as c_int);
            // The two pages are added to what earlier notifiers freed.
            assert_eq!(freed, 7);
            assert_eq!(b.calls.load(Relaxed), 1);
            assert_eq!(b.pages(), 0);

            b.unregister_oom_notifier();
            // Unregistering twice is harmless, and registering again works.
            b.unregister_oom_notifier();
            b.register_oom_notifier(0)?;
            // Dropping the balloon unregisters the notifier.
            drop(b);
            Ok(())
        })
    }

    impl BalloonReport for Record {
        fn report(balloon: &BalloonDevInfo<Self>, pages: &ReportedPages<'_>) -> Result {
            balloon.calls.add(1, Relaxed);
            let (_, bytes) = pages.get(0).ok_or(EINVAL)?;
            balloon.newpfn.store(bytes, Relaxed);
            balloon.oldpfn.store(pages.len(), Relaxed);
            assert!(pages.get(pages.len()).is_none());
            match balloon.answer.load(Relaxed) {
                0 => Ok(()),
                errno => Err(Error::from_errno(errno)),
            }
        }
    }

    #[test]
    fn page_reporting_callback() -> Result {
        crate::binding::scope(|binding| -> Result {
            let b = KBox::pin_init(BalloonDevInfo::new(binding, false, record()), GFP_KERNEL)?;
            if !cfg!(CONFIG_PAGE_REPORTING) {
                assert_eq!(b.register_page_reporting(None, 0), Err(EOPNOTSUPP));
                return Ok(());
            }
            // The default order, so that the first registration (which fixes the order for good)
            // picks what the virtio balloon would pick anyway.
            b.register_page_reporting(None, 0)?;
            assert_eq!(b.register_page_reporting(None, 0), Err(EBUSY));
            b.unregister_page_reporting();
            b.unregister_page_reporting();

            // Call the callback as `page_reporting_process()` would, with one 4 KiB block.
            b.register_page_reporting(None, 0)?;
            // SAFETY: Registered, so only read by page reporting.
            let report = unsafe { (*b.reporting.as_raw()).report }.ok_or(EINVAL)?;
            let buf = KBox::new([0u8; 4096], GFP_KERNEL)?;
            let mut sg = pin_init::zeroed::<bindings::scatterlist>();
            // SAFETY: `sg` is a valid entry and `buf` a valid kernel buffer of the given length.
            unsafe { bindings::sg_init_one(&mut sg, buf.as_ptr().cast(), 4096) };
            let mut call = || {
                // SAFETY: `b` is alive and `sg` describes one valid block for the call.
                unsafe { report(b.reporting.as_raw(), &raw mut sg, 1) }
            };
            assert_eq!(call(), 0);
            assert_eq!(b.calls.load(Relaxed), 1);
            assert_eq!(b.newpfn.load(Relaxed), 4096);
            assert_eq!(b.oldpfn.load(Relaxed), 1);
            b.answer.store(EIO.to_errno(), Relaxed);
            assert_eq!(call(), EIO.to_errno());
            // Dropping the balloon unregisters it.
            drop(b);
            Ok(())
        })
    }

    #[test]
    fn poison_queries() {
        // Both cannot be on at once: `init_on_free` disables poisoning.
        assert!(!(want_init_on_free() && page_poisoning_enabled()));
        assert_eq!(PAGE_POISON, 0xaa);
    }

    #[test]
    fn migrate_mode_roundtrip() {
        for mode in [
            MigrateMode::Async,
            MigrateMode::SyncLight,
            MigrateMode::Sync,
        ] {
            assert_eq!(MigrateMode::from_raw(mode.as_raw()), Ok(mode));
            assert_eq!(bindings::migrate_mode(mode as u32), mode.as_raw());
        }
        assert!(!MigrateMode::Async.may_block());
        assert!(MigrateMode::Sync.may_block());
        assert_eq!(
            MigrateMode::from_raw(bindings::migrate_mode(1000)),
            Err(EINVAL)
        );
    }

    #[test]
    fn inflate_deflate_roundtrip() -> Result {
        crate::binding::scope(|binding| -> Result {
            let b = KBox::pin_init(
                BalloonDevInfo::new(binding, false, Refuse(Atomic::new(0))),
                GFP_KERNEL,
            )?;
            assert_eq!(b.pages(), 0);
            assert!(b.dequeue().is_none());

            let mut pfns = KVec::new();
            for _ in 0..4 {
                let page = b.alloc_page().ok_or(ENOMEM)?;
                let pfn = page.pfn();
                assert_eq!(b.enqueue(page)?, pfn);
                pfns.push(pfn, GFP_KERNEL)?;
            }
            let batch = [b.alloc_page().ok_or(ENOMEM)?, b.alloc_page().ok_or(ENOMEM)?];
            assert_eq!(b.enqueue_many(batch), 2);
            assert_eq!(b.pages(), 6);

            // Nothing triggers compaction here, so every page is on the list.
            let page = b.dequeue().ok_or(EINVAL)?;
            assert_eq!(b.pages(), 5);
            page.release();
            let mut out = KVec::new();
            let got = b.dequeue_many(3, |p| {
                let _ = out.push(p.pfn(), GFP_KERNEL);
            });
            assert_eq!(got, 3);
            assert_eq!(out.len(), 3);
            assert_eq!(b.pages(), 2);
            // Asking for more than is there returns what is there.
            assert_eq!(b.dequeue_many(10, DeflatedPage::release), 2);
            assert_eq!(b.pages(), 0);
            assert!(b.dequeue().is_none());
            assert_eq!(b.isolated_pages(), 0);
            Ok(())
        })
    }

    #[test]
    fn a_deflation_the_host_missed_goes_back_in() -> Result {
        crate::binding::scope(|binding| -> Result {
            let b = KBox::pin_init(
                BalloonDevInfo::new(binding, false, Refuse(Atomic::new(0))),
                GFP_KERNEL,
            )?;
            let page = b.alloc_page().ok_or(ENOMEM)?;
            let pfn = b.enqueue(page)?;
            let page = b.dequeue().ok_or(EINVAL)?;
            assert_eq!(b.pages(), 0);
            // The same page, balloon-owned again: it can be enqueued, dequeued and released.
            assert_eq!(b.enqueue(page.keep())?, pfn);
            assert_eq!(b.pages(), 1);
            let page = b.dequeue().ok_or(EINVAL)?;
            assert_eq!(page.pfn(), pfn);
            page.release();
            assert_eq!(b.pages(), 0);
            Ok(())
        })
    }

    #[test]
    fn no_whole_block_while_smaller_free_pages_are_left() -> Result {
        // Holes: free 2 MiB blocks taken and every other page of each given back, until the
        // free pages smaller than a block are more than the policy lets stay free (a KUnit
        // guest has free 2 MiB blocks right after boot).
        let order = BalloonBlock::HUGE_ORDER;
        let mut kept = KVec::new();
        loop {
            let (smaller, most) = BalloonBlock::smaller_free(order);
            if smaller >= most + (1 << order) {
                break;
            }
            let block = BalloonBlock::alloc_if_free(order).ok_or(ENOMEM)?;
            for (i, page) in block.enumerate() {
                if i % 2 == 0 {
                    kept.push(page, GFP_KERNEL)?;
                }
            }
            // At most 256 MiB of holes: a guest with more free memory needs no more.
            if kept.len() >= 1 << 16 {
                return Err(ENOMEM);
            }
        }
        // Single pages would take those first: so does the policy.
        assert!(BalloonBlock::alloc_if_smallest(order).is_none());
        // Beyond the page allocator's orders there is never a block.
        assert!(BalloonBlock::alloc_if_smallest(bindings::MAX_PAGE_ORDER + 1).is_none());
        Ok(())
    }

    #[test]
    fn bulk_pages_fill_holes_before_free_blocks() -> Result {
        // Holes: a free 2 MiB block taken, every other page of it given back. A KUnit guest
        // has free 2 MiB blocks right after boot; without one, there is nothing to show.
        let block = BalloonBlock::alloc_if_free(BalloonBlock::HUGE_ORDER).ok_or(ENOMEM)?;
        let n = block.pages();
        let mut kept = KVec::with_capacity(n / 2, GFP_KERNEL)?;
        let mut base = None;
        for (i, page) in block.enumerate() {
            base.get_or_insert(page.pfn());
            if i % 2 == 0 {
                kept.push(page, GFP_KERNEL)?;
            }
        }
        let base = base.ok_or(EINVAL)?;
        // Bulk single pages take those holes (the per-cpu list, then the smallest free blocks)
        // before they split a free 2 MiB block, as one-at-a-time allocations do. Other pages
        // freed meanwhile may come first: at least half must be holes.
        let mut got = KVec::with_capacity(n / 2, GFP_KERNEL)?;
        let taken = BalloonPage::alloc_bulk(n / 2, |page| {
            let _ = got.push_within_capacity(page);
        });
        assert_eq!(taken, n / 2);
        assert_eq!(got.len(), n / 2);
        let in_holes = got
            .iter()
            .filter(|p| (base..base + n).contains(&p.pfn()))
            .count();
        assert!(in_holes >= n / 4);
        // Every page is a distinct order-0 page of its own.
        let mut pfns = KVec::with_capacity(got.len(), GFP_KERNEL)?;
        for p in got.iter() {
            pfns.push(p.pfn(), GFP_KERNEL)?;
        }
        pfns.sort_unstable();
        assert!(pfns.windows(2).all(|w| w[0] != w[1]));
        Ok(())
    }

    #[test]
    fn a_block_is_enqueued_page_by_page_in_frame_order() -> Result {
        crate::binding::scope(|binding| -> Result {
            let b = KBox::pin_init(
                BalloonDevInfo::new(binding, false, Refuse(Atomic::new(0))),
                GFP_KERNEL,
            )?;
            assert!(BalloonBlock::alloc_if_free(bindings::MAX_PAGE_ORDER + 1).is_none());
            // A KUnit guest has free 2 MiB blocks right after boot: without one the case would
            // prove nothing, so it fails.
            let block = BalloonBlock::alloc_if_free(BalloonBlock::HUGE_ORDER).ok_or(ENOMEM)?;
            let n = block.pages();
            assert_eq!(n, 1 << BalloonBlock::HUGE_ORDER);
            let mut first = None;
            let mut expect = 0;
            let enqueued = b.enqueue_many(block.inspect(|page| {
                let pfn = page.pfn();
                let base = *first.get_or_insert(pfn);
                assert_eq!(pfn, base + expect);
                expect += 1;
            }));
            assert_eq!(enqueued, n);
            assert_eq!(b.pages(), n);
            let base = first.ok_or(EINVAL)?;
            // Naturally aligned, as the page allocator hands out blocks.
            assert_eq!(base % n, 0);
            // Every page leaves the balloon on its own.
            assert_eq!(b.dequeue_many(n, DeflatedPage::release), n);
            assert_eq!(b.pages(), 0);
            Ok(())
        })
    }

    #[test]
    fn a_block_frees_the_pages_not_taken() -> Result {
        // Order 2 is always free in a KUnit guest; without it the case would prove nothing.
        let mut block = BalloonBlock::alloc_if_free(2).ok_or(ENOMEM)?;
        let page = block.next().ok_or(EINVAL)?;
        assert_eq!(block.size_hint(), (3, Some(3)));
        // One page on its own, the other three with the block: nothing leaks (kmemleak and the
        // debug guest's page checks would see it), nothing is freed twice.
        drop(page);
        drop(block);
        Ok(())
    }

    #[test]
    fn drop_frees_leftover_pages() -> Result {
        crate::binding::scope(|binding| -> Result {
            let mut b = KBox::pin_init(
                BalloonDevInfo::new(binding, true, Refuse(Atomic::new(0))),
                GFP_KERNEL,
            )?;
            // The accounting mode can change while the balloon is empty, not once it holds pages.
            b.as_mut().set_adjust_managed_page_count(false)?;
            let mut pfns = KVec::new();
            for _ in 0..64 {
                let page = b.alloc_page().ok_or(ENOMEM)?;
                pfns.push(b.enqueue(page)?, GFP_KERNEL)?;
            }
            assert_eq!(b.as_mut().set_adjust_managed_page_count(true), Err(EBUSY));
            assert_eq!(b.pages(), 64);
            // Dropping with pages in the balloon frees them (with a warning) instead of leaking
            // them: nobody holds them afterwards. (Most, not all: the page allocator may hand one
            // out again meanwhile; a leak keeps every one.)
            drop(b);
            let free = pfns
                .iter()
                .filter(|&&pfn| {
                    // SAFETY: `pfn` is a frame of memory the balloon held, so it has a
                    // `struct page`; its reference count is read atomically.
                    unsafe { bindings::movable_page_count(bindings::movable_pfn_to_page(pfn)) == 0 }
                })
                .count();
            assert!(free > pfns.len() / 2);
            Ok(())
        })
    }

    #[test]
    fn a_leaked_balloon_is_torn_down_when_its_binding_ends() -> Result {
        let mut leaked: *const BalloonDevInfo<Record> = core::ptr::null();
        crate::binding::scope(|binding| -> Result {
            let b = KBox::pin_init(BalloonDevInfo::new(binding, false, record()), GFP_KERNEL)?;
            b.register_oom_notifier(80)?;
            b.register_page_reporting(None, 0).or_else(|e| {
                // Another device may report already, or the kernel has no page reporting.
                if e == EBUSY || e == EOPNOTSUPP {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            b.enqueue(b.alloc_page().ok_or(ENOMEM)?)?;
            b.enqueue(b.alloc_page().ok_or(ENOMEM)?)?;
            // What `core::mem::forget` of the box does: its drop never runs.
            // SAFETY: The value is not moved: the box is only turned into a pointer, dropped
            // below.
            leaked = KBox::into_raw(unsafe { Pin::into_inner_unchecked(b) });
            Ok(())
        })?;
        // SAFETY: The leaked box is alive until it is rebuilt and dropped at the end.
        let b = unsafe { &*leaked };
        // The end of the binding did what the drop would have: no callback, no page left.
        assert!(!b.oom.is_registered());
        assert!(!b.reporting.is_registered());
        assert_eq!(b.pages(), 0);
        // And nothing comes back: no page goes in (it is freed instead), no callback either.
        let page = b.alloc_page().ok_or(ENOMEM)?;
        assert_eq!(b.enqueue(page), Err(ENODEV));
        assert_eq!(b.pages(), 0);
        assert_eq!(b.register_oom_notifier(80), Err(ENODEV));
        assert_eq!(b.register_page_reporting(None, 0), Err(ENODEV));
        // Dropping it afterwards finds nothing left to do.
        // SAFETY: `leaked` comes from `KBox::into_raw` and is not used afterwards.
        drop(unsafe { KBox::from_raw(leaked.cast_mut()) });
        Ok(())
    }

    #[test]
    fn no_balloon_once_its_binding_has_ended() -> Result {
        pin_init::stack_pin_init!(let teardown = crate::binding::Teardown::new());
        // SAFETY: `teardown` is pinned on this frame and runs right away, before anything the
        // binding could cover goes away.
        let binding = unsafe { crate::binding::Teardown::binding(core::ptr::from_ref(&*teardown)) };
        teardown.run();
        let b = KBox::pin_init(BalloonDevInfo::new(binding, false, record()), GFP_KERNEL);
        assert_eq!(b.err(), Some(ENODEV));
        Ok(())
    }
}
