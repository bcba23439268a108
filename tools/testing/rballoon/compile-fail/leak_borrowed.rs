// SPDX-License-Identifier: GPL-2.0

//! Leaking a registration must not let its callbacks outlive what they borrow.
//!
//! Built by `make lint` (scripts/rballoon/lint.sh) with the flags of the driver, twice: with
//! `--cfg borrow_local` the data of each registration borrows a local of the closure, which lives
//! shorter than the binding, and rustc must refuse it ("does not live long enough"); without it
//! the data borrows a `'static` and the very same leaks compile, since the end of the binding
//! tears them down. Kernel doctests cannot be `compile_fail`, hence this file.

use kernel::{
    balloon::{BalloonDevInfo, BalloonMigrate, MigrateMode, MigratingPage},
    binding,
    prelude::*,
    shrinker::{ScanResult, Shrink, ShrinkControl, Shrinker},
};

/// Data that borrows a counter.
pub struct Counts<'a>(&'a usize);

impl Shrink for Counts<'_> {
    fn count_objects(&self, _sc: &ShrinkControl<'_>) -> usize {
        *self.0
    }

    fn scan_objects(&self, _sc: &mut ShrinkControl<'_>) -> ScanResult {
        ScanResult::Stop
    }
}

impl BalloonMigrate for Counts<'_> {
    fn migrate(
        &self,
        _new: &MigratingPage<'_>,
        _old: &MigratingPage<'_>,
        _m: MigrateMode,
    ) -> Result {
        Err(EAGAIN)
    }
}

/// Registers a shrinker and a balloon on borrowed data and leaks both.
pub fn leak() -> Result {
    binding::scope(|b| -> Result {
        let local = 8usize;
        #[cfg(borrow_local)]
        let objects = &local;
        #[cfg(not(borrow_local))]
        let objects: &'static usize = {
            let _ = local;
            &8
        };
        let shrinker = KBox::pin_init(Shrinker::new(b, c"leak", Counts(objects)), GFP_KERNEL)?;
        core::mem::forget(shrinker);
        let balloon = KBox::pin_init(BalloonDevInfo::new(b, false, Counts(objects)), GFP_KERNEL)?;
        core::mem::forget(balloon);
        Ok(())
    })
}
