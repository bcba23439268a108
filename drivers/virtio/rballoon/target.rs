// SPDX-License-Identifier: GPL-2.0

//! Balloon size arithmetic: how far the balloon is from what the host asks, and how much of that
//! one request may cover.
//!
//! All counts are in balloon pages (4 KiB), like the device's `num_pages` and `actual` config
//! fields and the C driver's `vb->num_pages`.
//!
//! API summary (pure logic, no `unsafe`, no kernel state):
//!
//! - [`align_target`]`(num_pages, pages_per_page)`: the host's target rounded up to whole guest
//!   pages (`ALIGN(num_pages, VIRTIO_BALLOON_PAGES_PER_PAGE)` in C).
//! - [`towards_target`]`(num_pages, current, pages_per_page) -> i64`: the C `towards_target()`;
//!   positive means inflate, negative deflate.
//! - [`Step`] / [`next_step`]`(diff, current, max)`: the next step (inflate or deflate how many
//!   balloon pages), clamped to `max` (what one step's batch of PFN arrays holds) and, for
//!   deflate, to what the balloon holds, as `fill_balloon()` / `leak_balloon()` clamp to one
//!   array.
//! - [`remaining`]`(diff, step, done)`: the difference left once a step processed `done` pages,
//!   as `update_balloon_size_func()` computes it to decide whether to run again.

use core::cmp::Ordering;

/// The host's target `num_pages` rounded up to a whole number of guest pages.
///
/// Rounding up (never down) is what the C driver does so that a target that is not a multiple of
/// the guest page does not make the balloon inflate and deflate one page forever.
///
/// Computed in 64 bits: the C driver's `ALIGN()` on the `u32` wraps to 0 for a target within one
/// guest page of `u32::MAX`, which would deflate the whole balloon; here such a target stays
/// (just) above `u32::MAX` instead.
///
/// `pages_per_page` must be a power of two (it is `PAGE_SIZE >> 12`); zero is treated as one.
pub(crate) const fn align_target(num_pages: u32, pages_per_page: u32) -> u64 {
    let ppp = if pages_per_page == 0 {
        1
    } else {
        pages_per_page as u64
    };
    let mask = ppp - 1;
    (num_pages as u64 + mask) & !mask
}

/// How many balloon pages the balloon must grow (positive) or shrink (negative) by to reach the
/// host's target `num_pages`, when it currently holds `current` balloon pages.
pub(crate) const fn towards_target(num_pages: u32, current: u32, pages_per_page: u32) -> i64 {
    // Both sides fit in i64 with room to spare: at most u32::MAX + 255 minus at most u32::MAX.
    align_target(num_pages, pages_per_page) as i64 - current as i64
}

/// The next request the balloon makes to move towards the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// At the target, nothing to do.
    Idle,
    /// Allocate and hand this many balloon pages (4 KiB) to the host.
    Inflate(usize),
    /// Take back this many balloon pages (4 KiB) from the host.
    Deflate(usize),
}

/// The next step for a difference `diff` (from [`towards_target`]) when the balloon currently
/// holds `current` balloon pages, a step covering at most `max` balloon pages.
///
/// One step never exceeds `max` (the driver's batch of PFN arrays, where the C driver's
/// `fill_balloon()` and `leak_balloon()` clamp to one array), and a deflate never asks for more
/// than the balloon holds.
pub(crate) fn next_step(diff: i64, current: u32, max: usize) -> Step {
    let max = max as u64;
    match diff.cmp(&0) {
        Ordering::Greater => Step::Inflate(diff.unsigned_abs().min(max) as usize),
        Ordering::Less => match diff.unsigned_abs().min(max).min(u64::from(current)) {
            // Asked to shrink an empty balloon: there is nothing to take back.
            0 => Step::Idle,
            n => Step::Deflate(n as usize),
        },
        Ordering::Equal => Step::Idle,
    }
}

/// The difference left after `step` moved `done` balloon pages (which may be fewer than asked,
/// when allocation fails or pages are being migrated).
///
/// Zero means the balloon reached the target; anything else means another round is needed.
pub(crate) fn remaining(diff: i64, step: Step, done: usize) -> i64 {
    let done = done as i64;
    match step {
        Step::Idle => diff,
        Step::Inflate(_) => diff - done,
        Step::Deflate(_) => diff + done,
    }
}

#[kernel::macros::kunit_tests(rballoon_target)]
mod tests {
    use super::*;
    use crate::batch::STEP_PFNS_MAX;
    use crate::pfn::VIRTIO_BALLOON_ARRAY_PFNS_MAX;

    /// Steps of one PFN array, as the C driver makes them.
    fn next_step(diff: i64, current: u32) -> Step {
        super::next_step(diff, current, VIRTIO_BALLOON_ARRAY_PFNS_MAX)
    }

    #[test]
    fn align_rounds_up_to_guest_pages() {
        // 4K guest pages: every balloon page is a guest page.
        assert_eq!(align_target(0, 1), 0);
        assert_eq!(align_target(1001, 1), 1001);
        // 16K: 4 balloon pages per guest page.
        assert_eq!(align_target(1, 4), 4);
        assert_eq!(align_target(4, 4), 4);
        assert_eq!(align_target(5, 4), 8);
        // 64K: 16 balloon pages per guest page.
        assert_eq!(align_target(17, 16), 32);
        assert_eq!(align_target(32, 16), 32);
        // Near the top of u32 the result does not wrap to 0 as C's ALIGN() on a u32 would.
        assert_eq!(align_target(u32::MAX, 16), 1u64 << 32);
        assert_eq!(align_target(u32::MAX, 1), u64::from(u32::MAX));
    }

    #[test]
    fn towards_target_sign_and_size() {
        assert_eq!(towards_target(1000, 0, 1), 1000);
        assert_eq!(towards_target(0, 1000, 1), -1000);
        assert_eq!(towards_target(1000, 1000, 1), 0);
        // 16K guest pages and a target of 1001: 1004 aligned, 4 pages per guest page.
        assert_eq!(towards_target(1001, 1000, 4), 4);
        // Once the balloon holds the aligned amount there is nothing left to do: no ping-pong.
        assert_eq!(towards_target(1001, 1004, 4), 0);
        assert_eq!(towards_target(u32::MAX, 0, 1), i64::from(u32::MAX));
        assert_eq!(towards_target(0, u32::MAX, 1), -i64::from(u32::MAX));
    }

    #[test]
    fn steps_are_clamped_to_one_array() {
        assert_eq!(next_step(0, 0), Step::Idle);
        assert_eq!(next_step(10, 0), Step::Inflate(10));
        assert_eq!(next_step(256, 0), Step::Inflate(256));
        assert_eq!(next_step(1 << 20, 0), Step::Inflate(256));
        assert_eq!(next_step(-10, 100), Step::Deflate(10));
        assert_eq!(next_step(-(1 << 20), 1 << 20), Step::Deflate(256));
        // Deflate never takes back more than the balloon holds.
        assert_eq!(next_step(-100, 30), Step::Deflate(30));
        assert_eq!(next_step(-100, 0), Step::Idle);
    }

    #[test]
    fn batched_steps_cover_several_arrays() {
        let batched = |diff, current| super::next_step(diff, current, STEP_PFNS_MAX);
        assert_eq!(batched(1 << 20, 0), Step::Inflate(STEP_PFNS_MAX));
        assert_eq!(batched(1000, 0), Step::Inflate(1000));
        assert_eq!(batched(-(1 << 20), 1 << 20), Step::Deflate(STEP_PFNS_MAX));
        assert_eq!(batched(-(1 << 20), 5000), Step::Deflate(STEP_PFNS_MAX));
        assert_eq!(batched(-(1 << 20), 3000), Step::Deflate(3000));
        assert_eq!(batched(-1, 0), Step::Idle);
        // 1 GiB of 4 KiB pages: 64 batched steps where one array per step takes 1024.
        let (mut current, mut rounds) = (0u32, 0);
        while let Step::Inflate(n) = batched(towards_target(1 << 18, current, 1), current) {
            current += n as u32;
            rounds += 1;
        }
        assert_eq!((current, rounds), (1 << 18, 64));
    }

    #[test]
    fn remaining_after_partial_steps() {
        // 1000 to inflate: the first round moves one array, 744 remain.
        let step = next_step(1000, 0);
        assert_eq!(remaining(1000, step, 256), 744);
        // Allocation failed after 100 pages: 900 remain and the work runs again.
        assert_eq!(remaining(1000, step, 100), 900);
        // Deflating 300 with 256 per round takes two rounds.
        let first = next_step(-300, 300);
        assert_eq!(first, Step::Deflate(256));
        let left = remaining(-300, first, 256);
        assert_eq!(left, -44);
        let second = next_step(left, 44);
        assert_eq!(second, Step::Deflate(44));
        assert_eq!(remaining(left, second, 44), 0);
        assert_eq!(remaining(5, Step::Idle, 0), 5);
    }

    #[test]
    fn converges_for_all_page_sizes() {
        // Drive the arithmetic like the size work does, with every page always available, and
        // check it lands exactly on the aligned target in the expected number of rounds.
        for ppp in [1u32, 4, 16] {
            for (target, start) in [(1001u32, 0u32), (0, 4096), (777, 512)] {
                let mut current = start;
                let mut rounds = 0;
                loop {
                    let diff = towards_target(target, current, ppp);
                    match next_step(diff, current) {
                        Step::Idle => break,
                        Step::Inflate(n) => current += n as u32,
                        Step::Deflate(n) => current -= n as u32,
                    }
                    rounds += 1;
                    assert!(rounds <= 64);
                }
                assert_eq!(u64::from(current), align_target(target, ppp));
                assert_eq!(current % ppp, 0);
            }
        }
    }
}
