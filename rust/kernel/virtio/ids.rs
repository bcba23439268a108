// SPDX-License-Identifier: GPL-2.0

//! Typed names for a driver's virtqueues and deferred work items.
//!
//! A driver names its queues ([`Driver::Queue`]) and its work items ([`Driver::Work`]) with
//! fieldless enums declared by [`virtio_ids!`](crate::virtio_ids). The bus calls
//! [`Driver::vq_callback`] and [`Driver::work`] with those names, the driver queues work and takes
//! its queues by them: no position or number is passed around, and a name of another type is
//! refused at run time where the compiler cannot see it (the device does not know its driver's
//! type).
//!
//! [`Driver::Queue`]: super::Driver::Queue
//! [`Driver::Work`]: super::Driver::Work
//! [`Driver::vq_callback`]: super::Driver::vq_callback
//! [`Driver::work`]: super::Driver::work

use core::any::TypeId;

/// The names of a driver's queues or work items, each standing for one position.
///
/// Implemented by [`virtio_ids!`](crate::virtio_ids) for a fieldless enum; [`NoIds`] for a
/// driver without queue callbacks or without work. A wrong `ALL` (a name twice, say) only
/// misnames positions: [`Ids::position`] is the first position of a name, and nothing unsafe
/// depends on it.
pub trait Ids: Copy + PartialEq + Send + Sync + 'static {
    /// Every name, in position order: `ALL[i]` names position `i`.
    const ALL: &'static [Self];

    /// The position `self` names.
    fn position(self) -> usize {
        Self::ALL
            .iter()
            .position(|n| *n == self)
            .unwrap_or(usize::MAX)
    }

    /// The name of position `i`, if there is one.
    fn at(i: usize) -> Option<Self> {
        Self::ALL.get(i).copied()
    }
}

/// No names: for a driver without queue callbacks ([`Driver::Queue`]) or deferred work
/// ([`Driver::Work`]).
///
/// [`Driver::Queue`]: super::Driver::Queue
/// [`Driver::Work`]: super::Driver::Work
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NoIds {}

impl Ids for NoIds {
    const ALL: &'static [Self] = &[];
}

/// The type of a set of names, to check that a name given to the device is its driver's.
pub(super) fn type_of<I: Ids>() -> TypeId {
    TypeId::of::<I>()
}

/// Declares a fieldless enum naming a driver's queues or work items, in position order, and
/// implements [`Ids`](crate::virtio::Ids) for it.
///
/// # Examples
///
/// ```
/// kernel::virtio_ids! {
///     /// The queues, in the order of the device's queue list.
///     pub enum Queue { Requests, Events }
/// }
///
/// use kernel::virtio::Ids;
/// assert_eq!(Queue::Events.position(), 1);
/// assert_eq!(Queue::at(0), Some(Queue::Requests));
/// assert_eq!(Queue::at(2), None);
/// ```
#[macro_export]
macro_rules! virtio_ids {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $crate::virtio::Ids for $name {
            const ALL: &'static [Self] = &[$(Self::$variant),+];
        }
    };
}
