// SPDX-License-Identifier: GPL-2.0

//! A `printk_ratelimit()`-like limiter for the driver's messages.

use kernel::time::{Delta, Instant, Monotonic};

/// `printk_ratelimit()`-like limiter: 10 messages per 5 seconds, the kernel's default.
pub(crate) struct RateLimit {
    begin: Option<Instant<Monotonic>>,
    printed: u32,
}

impl RateLimit {
    const INTERVAL: Delta = Delta::from_secs(5);
    const BURST: u32 = 10;

    pub(crate) const fn new() -> Self {
        Self {
            begin: None,
            printed: 0,
        }
    }

    pub(crate) fn allow(&mut self) -> bool {
        let expired = match &self.begin {
            Some(begin) => begin.elapsed() > Self::INTERVAL,
            None => true,
        };
        if expired {
            self.begin = Some(Instant::now());
            self.printed = 0;
        }
        self.printed = self.printed.saturating_add(1);
        self.printed <= Self::BURST
    }
}
