//! Typed ids: indexes into the engine's tables (interned names, containers, program images,
//! the nodes of a fingerprint or of a policy, chains of deviant processes, unique deviations),
//! one type per kind, so that an id of one table is never used in another.
//!
//! An id keeps its index plus one in a `NonZeroU32`: it is as small as a `u32`, and so is an
//! `Option` of it, so "no such thing" is `None` rather than a sentinel value. A table of more
//! than `u32::MAX - 1` entries is a bug of the engine (a stream never holds that many
//! processes), and making an id for it panics.

use std::num::NonZeroU32;

/// Declares an id type: `typed_id!(/// docs... pub(crate) ImageId);`.
macro_rules! typed_id {
    ($(#[$attr:meta])* $vis:vis $name:ident) => {
        $(#[$attr])*
        ///
        /// Ids compare in the order of their indexes.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis struct $name(::std::num::NonZeroU32);

        impl $name {
            /// The id of the entry at `index` of its table.
            #[inline]
            $vis fn new(index: usize) -> Self {
                Self($crate::id::slot(index))
            }

            /// The index of its entry in its table.
            #[inline]
            $vis fn index(self) -> usize {
                // Widening: a u32 always fits a usize on the targets the engine builds for.
                (self.0.get() - 1) as usize
            }
        }
    };
}
pub(crate) use typed_id;

/// `index + 1`, the value an id keeps.
#[inline]
pub(crate) fn slot(index: usize) -> NonZeroU32 {
    u32::try_from(index)
        .ok()
        .and_then(|i| i.checked_add(1))
        .and_then(NonZeroU32::new)
        .expect("an engine table holds fewer than u32::MAX entries")
}

#[cfg(test)]
mod tests {
    typed_id!(Probe);

    #[test]
    fn an_id_gives_back_its_index_and_none_costs_nothing() {
        for index in [0, 1, 41, u32::MAX as usize - 1] {
            assert_eq!(Probe::new(index).index(), index);
        }
        assert_ne!(Probe::new(0), Probe::new(1));
        assert_eq!(size_of::<Option<Probe>>(), size_of::<u32>());
    }

    #[test]
    #[should_panic(expected = "fewer than u32::MAX entries")]
    fn an_index_past_the_last_id_is_refused() {
        Probe::new(u32::MAX as usize);
    }
}
