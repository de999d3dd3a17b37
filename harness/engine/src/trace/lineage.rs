//! The processes an investigation follows, and the execs they descend from: one entry per exec
//! (its pid, command line, program), linked to the exec its parent ran, kept while a running
//! process runs it or an entry below it is kept. A process that exits with no running
//! descendant frees its entries, so what is kept grows with the running processes and their
//! ancestry, not with the stream; a trace copies what it shows when its deviation is found.
//!
//! An ancestry is kept at most as many levels deep as a trace shows (`trace-processes`): an
//! exec deeper than that is linked to its parent's parent, on the last level, with the
//! processes it skips counted (`depth` is the real depth, `level` the kept one), as the
//! tracker does with program nodes. A chain of 10,000 shells, or a process exec'ing 10,000
//! times, keeps the first levels and the running processes, not every exec.

use guardlab_events::{ExeStatus, ProcessKey};
use rustc_hash::FxHashMap;

use super::TraceConnection;
use crate::id::typed_id;
use crate::limits::StateSize;
use crate::tracker::{ContainerId, ImageId};

typed_id!(
    /// An exec of [`Lineage`] ([`Entry`]); its slot is used again once it is freed.
    pub(super) EntryId
);

/// One exec: what a trace shows of a process.
pub(super) struct Entry {
    pub key: ProcessKey,
    pub container: ContainerId,
    pub pid: u32,
    pub ns_pid: u32,
    pub name: Box<str>,
    pub exe: Box<str>,
    pub exe_status: ExeStatus,
    pub euser: Box<str>,
    /// The command line, cut at `trace-args-bytes` (`...` last when cut).
    pub args: Vec<String>,
    pub ts: u64,
    /// The program node it runs; `placed` when it is its own (not its parent's, see
    /// [`crate::limits`]).
    pub image: Option<ImageId>,
    pub placed: bool,
    /// The exec its parent ran, when known.
    pub parent: Option<EntryId>,
    /// Execs above it in its real ancestry, and in the kept one.
    pub depth: u32,
    pub level: u32,
    /// Running processes on it and entries below it.
    pub refs: u32,
    /// The bytes charged for it.
    pub bytes: u64,
}

/// A running process: the exec it runs, and its connections so far.
pub(super) struct Proc {
    pub entry: EntryId,
    pub connections: Vec<TraceConnection>,
}

#[derive(Default)]
pub(super) struct Lineage {
    entries: Vec<Option<Entry>>,
    free: Vec<EntryId>,
    pub procs: FxHashMap<ProcessKey, Proc>,
}

impl Lineage {
    pub fn entry(&self, id: EntryId) -> &Entry {
        self.entries[id.index()]
            .as_ref()
            .expect("a kept entry is not freed")
    }

    fn entry_mut(&mut self, id: EntryId) -> &mut Entry {
        self.entries[id.index()]
            .as_mut()
            .expect("a kept entry is not freed")
    }

    /// The exec a running process of `container` runs: never one of another container's, so
    /// that an event naming another container's process (a sensor bug, a forged recording)
    /// ties no two containers' lineages together (as in the tracker).
    pub fn running(&self, key: &ProcessKey, container: ContainerId) -> Option<EntryId> {
        self.procs
            .get(key)
            .map(|p| p.entry)
            .filter(|&e| self.entry(e).container == container)
    }

    /// A running process of `container`, with its connections so far.
    pub fn process_mut(&mut self, key: &ProcessKey, container: ContainerId) -> Option<&mut Proc> {
        self.running(key, container)?;
        self.procs.get_mut(key)
    }

    /// An exec by `key`, whose parent exec is `parent`: the process runs it from now on.
    /// Ancestries are kept at most `levels` deep (see the module documentation). Returns the
    /// entries freed on the way (the process ran another exec before, which may be kept by
    /// nothing else now).
    pub fn exec(&mut self, mut entry: Entry, levels: u32) -> Vec<Entry> {
        let key = entry.key;
        (entry.depth, entry.level) = (0, 0);
        if let Some(p) = entry.parent {
            let parent = self.entry(p);
            entry.depth = parent.depth + 1;
            entry.level = parent.level + 1;
            if entry.level >= levels.max(1) {
                entry.parent = parent.parent;
                entry.level = parent.level;
            }
        }
        if let Some(p) = entry.parent {
            self.entry_mut(p).refs += 1;
        }
        entry.refs = 1;
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.entries.push(None);
                EntryId::new(self.entries.len() - 1)
            }
        };
        self.entries[id.index()] = Some(entry);
        let before = self.procs.insert(
            key,
            Proc {
                entry: id,
                connections: Vec::new(),
            },
        );
        match before {
            Some(old) => self.release(old.entry),
            None => Vec::new(),
        }
    }

    /// A fork in `container`: `key` runs its parent's exec.
    pub fn fork(
        &mut self,
        key: ProcessKey,
        parent: ProcessKey,
        container: ContainerId,
    ) -> Vec<Entry> {
        let Some(entry) = self.running(&parent, container) else {
            return Vec::new();
        };
        self.entry_mut(entry).refs += 1;
        match self.procs.insert(
            key,
            Proc {
                entry,
                connections: Vec::new(),
            },
        ) {
            Some(old) => self.release(old.entry),
            None => Vec::new(),
        }
    }

    /// A process of `container` exits: the entries kept by it alone are freed (and returned).
    pub fn exit(&mut self, key: &ProcessKey, container: ContainerId) -> Vec<Entry> {
        if self.running(key, container).is_none() {
            return Vec::new();
        }
        match self.procs.remove(key) {
            Some(p) => self.release(p.entry),
            None => Vec::new(),
        }
    }

    /// One reference less on `id`; what no longer has any is freed, up the ancestry (a loop,
    /// not a recursion: an ancestry may be as deep as a stream makes it).
    fn release(&mut self, id: EntryId) -> Vec<Entry> {
        let mut freed = Vec::new();
        let mut next = Some(id);
        while let Some(id) = next {
            let entry = self.entry_mut(id);
            entry.refs -= 1;
            if entry.refs > 0 {
                break;
            }
            let entry = self.entries[id.index()].take().expect("kept until now");
            self.free.push(id);
            next = entry.parent;
            freed.push(entry);
        }
        freed
    }

    /// The execs a trace of `id` shows, root first: its kept ancestry (see the module
    /// documentation); and how many execs of the real one it leaves out (between the last
    /// level and `id`).
    pub fn chain(&self, id: EntryId) -> (Vec<&Entry>, u32) {
        let last = self.entry(id);
        let mut chain = Vec::with_capacity(last.level as usize + 1);
        let mut next = Some(id);
        while let Some(id) = next {
            let e = self.entry(id);
            chain.push(e);
            next = e.parent;
        }
        chain.reverse();
        let omitted = last.depth + 1 - chain.len() as u32;
        (chain, omitted)
    }

    pub fn size(&self) -> StateSize {
        let kept = self.entries.iter().flatten();
        let heap: usize = kept
            .map(|e| {
                e.name.len()
                    + e.exe.len()
                    + e.euser.len()
                    + e.args
                        .iter()
                        .map(|a| a.len() + size_of::<String>())
                        .sum::<usize>()
            })
            .sum();
        let conns: usize = self.procs.values().map(|p| p.connections.len()).sum();
        StateSize::table(self.entries.len(), size_of::<Option<Entry>>(), heap)
            + StateSize::table(self.procs.len(), size_of::<(ProcessKey, Proc)>() + 8, 0)
            + StateSize::table(conns, size_of::<TraceConnection>() + 16, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c() -> ContainerId {
        ContainerId::new(0)
    }

    fn entry(key: u32, parent: Option<EntryId>) -> Entry {
        Entry {
            key: ProcessKey(key, u64::from(key)),
            container: c(),
            pid: key,
            ns_pid: key,
            name: "sh".into(),
            exe: "/bin/sh".into(),
            exe_status: ExeStatus::Resolved,
            euser: "root".into(),
            args: Vec::new(),
            ts: 0,
            image: None,
            placed: true,
            parent,
            depth: 0,
            level: 0,
            refs: 0,
            bytes: 0,
        }
    }

    #[test]
    fn a_deep_chain_keeps_its_first_levels_and_its_running_processes() {
        let mut l = Lineage::default();
        let mut parent = None;
        for pid in 1..=100 {
            l.exec(entry(pid, parent), 5);
            parent = l.running(&ProcessKey(pid, u64::from(pid)), c());
        }
        let (chain, omitted) = l.chain(parent.unwrap());
        let pids: Vec<u32> = chain.iter().map(|e| e.pid).collect();
        assert_eq!(pids, [1, 2, 3, 4, 100]);
        assert_eq!(omitted, 95);
        let (chain, omitted) = l.chain(l.running(&ProcessKey(3, 3), c()).unwrap());
        assert_eq!(chain.iter().map(|e| e.pid).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(omitted, 0);
        // The innermost exits first: each frees its own entry, the rest are kept by the
        // processes still running.
        for pid in (2..=100).rev() {
            let freed = l.exit(&ProcessKey(pid, u64::from(pid)), c());
            assert_eq!(freed.len(), 1, "{pid}");
        }
        assert_eq!(l.exit(&ProcessKey(1, 1), c()).len(), 1);
        assert!(l.procs.is_empty());
        assert_eq!(l.free.len(), 100, "every slot free again");
    }

    #[test]
    fn a_process_exec_ing_again_and_again_keeps_a_few_entries() {
        let mut l = Lineage::default();
        l.exec(entry(1, None), 4);
        let key = ProcessKey(1, 1);
        for _ in 0..1000 {
            let previous = l.running(&key, c());
            l.exec(entry(1, previous), 4);
        }
        let kept = l.entries.iter().flatten().count();
        assert_eq!(kept, 4, "three levels and the one it runs");
        let (chain, omitted) = l.chain(l.running(&key, c()).unwrap());
        assert_eq!((chain.len(), omitted), (4, 997));
        assert_eq!(l.exit(&key, c()).len(), 4);
    }

    #[test]
    fn an_ancestry_kept_only_by_a_descendant_is_freed_with_it() {
        let mut l = Lineage::default();
        l.exec(entry(1, None), 8);
        let top = l.running(&ProcessKey(1, 1), c());
        l.fork(ProcessKey(2, 2), ProcessKey(1, 1), c());
        l.exec(entry(2, top), 8);
        // The parent exits first: its exec stays, kept by the child's.
        assert!(l.exit(&ProcessKey(1, 1), c()).is_empty());
        let (chain, _) = l.chain(l.running(&ProcessKey(2, 2), c()).unwrap());
        assert_eq!(chain.len(), 2);
        // Exec again: the old exec is the parent of the new one, nothing is freed.
        let previous = l.running(&ProcessKey(2, 2), c());
        assert!(l.exec(entry(2, previous), 8).is_empty());
        assert_eq!(l.exit(&ProcessKey(2, 2), c()).len(), 3);
        assert_eq!(l.free.len(), 3);
    }
}
