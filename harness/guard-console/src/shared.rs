//! The one store a run and its console share.

use std::sync::{Arc, Mutex, MutexGuard};

use guardlab_policy_store::PolicyStore;
use tokio::sync::watch;

/// A [`PolicyStore`] shared between the scenario runner (or the lab's event reader) and the
/// console's requests. Every change goes through [`SharedStore::update`], which tells the
/// watchers (the live pages, a runner waiting for the learner) the store's new generation.
#[derive(Clone)]
pub struct SharedStore {
    store: Arc<Mutex<PolicyStore>>,
    generation: watch::Sender<u64>,
}

impl SharedStore {
    pub fn new(store: PolicyStore) -> Self {
        let (generation, _) = watch::channel(store.generation());
        SharedStore {
            store: Arc::new(Mutex::new(store)),
            generation,
        }
    }

    /// Read the store. Never held across an await.
    pub fn read<T>(&self, f: impl FnOnce(&PolicyStore) -> T) -> T {
        f(&self.lock())
    }

    /// Change the store, then tell the watchers.
    pub fn update<T>(&self, f: impl FnOnce(&mut PolicyStore) -> T) -> T {
        let (out, generation) = {
            let mut store = self.lock();
            let out = f(&mut store);
            (out, store.generation())
        };
        self.generation.send_if_modified(|g| {
            let changed = *g != generation;
            *g = generation;
            changed
        });
        out
    }

    /// The store's generation, as it changes.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, PolicyStore> {
        // A panic while holding the lock leaves a store that is still whole (every method
        // changes it only after its checks), so a poisoned lock is used as it is.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}
