//! Interned strings and sets of DNS names: the tracker keeps each name once, and an id of it
//! everywhere else.

use rustc_hash::FxHashMap;

use super::{NameSetId, Sym};
use crate::limits::StateSize;

#[derive(Default)]
pub(crate) struct Symbols {
    index: FxHashMap<Box<str>, Sym>,
    names: Vec<Box<str>>,
}

impl Symbols {
    pub(crate) fn intern(&mut self, s: &str) -> Sym {
        if let Some(&sym) = self.index.get(s) {
            return sym;
        }
        let sym = Sym::new(self.names.len());
        self.names.push(s.into());
        self.index.insert(s.into(), sym);
        sym
    }

    pub(crate) fn get(&self, sym: Sym) -> &str {
        &self.names[sym.index()]
    }

    /// The symbol of a string interned already, if it is.
    pub(crate) fn find(&self, s: &str) -> Option<Sym> {
        self.index.get(s).copied()
    }

    pub(super) fn size(&self) -> StateSize {
        let heap: usize = self.names.iter().map(|n| 2 * n.len()).sum();
        StateSize::table(self.names.len(), 2 * size_of::<Box<str>>() + 8, heap)
    }
}

/// Interned sets of DNS names: every name the answers of one container gave for one address,
/// sorted by text so that a set is the same whatever order the answers came in.
#[derive(Default)]
pub(crate) struct NameSets {
    sets: Vec<Box<[Sym]>>,
    index: FxHashMap<Box<[Sym]>, NameSetId>,
}

impl NameSets {
    pub(crate) fn get(&self, set: NameSetId) -> &[Sym] {
        &self.sets[set.index()]
    }

    pub(super) fn size(&self) -> StateSize {
        let heap: usize = self
            .sets
            .iter()
            .map(|s| 2 * s.len() * size_of::<Sym>())
            .sum();
        StateSize::table(self.sets.len(), 2 * size_of::<Box<[Sym]>>() + 8, heap)
    }

    /// The set `set` (or the empty set for none) with `name` added.
    pub(super) fn with(&mut self, syms: &Symbols, set: Option<NameSetId>, name: Sym) -> NameSetId {
        let current: &[Sym] = match set {
            Some(set) => self.get(set),
            None => &[],
        };
        if let Some(set) = set
            && current.contains(&name)
        {
            return set;
        }
        let mut names: Vec<Sym> = current.to_vec();
        names.push(name);
        names.sort_by(|a, b| syms.get(*a).cmp(syms.get(*b)));
        let names: Box<[Sym]> = names.into();
        if let Some(&id) = self.index.get(&names) {
            return id;
        }
        let id = NameSetId::new(self.sets.len());
        self.sets.push(names.clone());
        self.index.insert(names, id);
        id
    }
}
