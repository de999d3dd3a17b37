//! The task that reads the ring buffer and the drop counters, and owns the decoder (with
//! everything user space keeps per watched cgroup).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use guardlab_events::Lost;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use crate::decoder::Decoder;
use crate::raw::{self, EvHdr};
use crate::{ContainerInfo, Event, EventBody};

/// Messages from the [`Sensor`](crate::Sensor) handle to its reader task, in the order the
/// handle did things.
pub(crate) enum Control {
    /// The cgroup is about to be enabled in the kernel: send its `container` event.
    Watch {
        id: u64,
        path: PathBuf,
        info: Box<ContainerInfo>,
    },
    /// The cgroup was removed from the kernel's `watched` map: deliver what it queued, then
    /// forget it.
    Unwatch { id: u64 },
}

pub(crate) struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    drops: Arc<Mutex<PerCpuArray<MapData, u64>>>,
    last_drops: Vec<u64>,
    tx: mpsc::Sender<Event>,
    control: mpsc::UnboundedReceiver<Control>,
    decoder: Decoder,
    /// Unwatches met while draining, applied once the drain is over.
    deferred_unwatch: Vec<u64>,
}

impl Reader {
    pub(crate) fn new(
        ring: AsyncFd<RingBuf<MapData>>,
        drops: Arc<Mutex<PerCpuArray<MapData, u64>>>,
        tx: mpsc::Sender<Event>,
        control: mpsc::UnboundedReceiver<Control>,
        decoder: Decoder,
    ) -> Self {
        Reader {
            ring,
            drops,
            last_drops: Vec::new(),
            tx,
            control,
            decoder,
            deferred_unwatch: Vec::new(),
        }
    }

    pub(crate) async fn run(
        mut self,
        drop_poll: Duration,
        drain_every: Duration,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut tick = tokio::time::interval(drop_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The kernel only wakes us once an eighth of the ring is full (see wakeup_flags in
        // guardlab.bpf.c): this timer delivers the records below that mark.
        let mut drain_tick = tokio::time::interval(drain_every.max(Duration::from_millis(1)));
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                msg = self.control.recv() => match msg {
                    Some(msg) => self.handle_control(msg).await,
                    None => break,
                },
                guard = self.ring.readable_mut() => {
                    match guard {
                        Ok(mut guard) => guard.clear_ready(),
                        Err(_) => break,
                    }
                    self.drain().await;
                }
                _ = drain_tick.tick() => self.drain().await,
                _ = tick.tick() => self.report_drops().await,
            }
        }
        // The programs are gone by now: what is left in the ring buffer is all there will be.
        while let Ok(msg) = self.control.try_recv() {
            self.handle_control(msg).await;
        }
        self.drain().await;
        self.report_drops().await;
    }

    async fn handle_control(&mut self, msg: Control) {
        match msg {
            Control::Watch { id, path, info } => self.start_cgroup(id, path, *info).await,
            Control::Unwatch { id } => {
                // Records the kernel queued before the unwatch still need the cgroup's
                // context (its path, for user names).
                self.drain().await;
                self.decoder.forget(id);
            }
        }
    }

    /// Control messages that arrive while draining: a watch now (its records follow), an
    /// unwatch after the drain (its records may still be in the ring).
    async fn handle_control_in_drain(&mut self, msg: Control) {
        match msg {
            Control::Watch { id, path, info } => {
                self.deferred_unwatch.retain(|d| *d != id);
                self.start_cgroup(id, path, *info).await;
            }
            Control::Unwatch { id } => self.deferred_unwatch.push(id),
        }
    }

    async fn start_cgroup(&mut self, id: u64, path: PathBuf, info: ContainerInfo) {
        self.decoder.watch(id, path);
        let ts = self.decoder.now();
        self.send(Event::new(ts, EventBody::Container(info))).await;
    }

    async fn send(&mut self, event: Event) {
        // A closed receiver means nobody listens any more: keep draining so the kernel side
        // does not count drops that nobody would see, and count what nobody got.
        let counter = match self.tx.send(event).await {
            Ok(()) => &self.decoder.counters().delivered,
            Err(_) => &self.decoder.counters().undelivered,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn drain(&mut self) {
        loop {
            let decoded = {
                let ring = self.ring.get_mut();
                let Some(item) = ring.next() else { break };
                let cgroup = raw::read_record::<EvHdr>(&item, std::mem::size_of::<EvHdr>())
                    .map(|h| h.cgroup_id);
                // A record of a cgroup whose `container` event is still queued: deliver that first.
                if let Some(id) = cgroup
                    && !self.decoder.knows(id)
                {
                    let bytes = item.to_vec();
                    drop(item);
                    while let Ok(msg) = self.control.try_recv() {
                        self.handle_control_in_drain(msg).await;
                    }
                    self.decoder.decode(&bytes)
                } else {
                    self.decoder.decode(&item)
                }
            };
            if let Some(event) = decoded {
                self.send(event).await;
            }
        }
        for id in std::mem::take(&mut self.deferred_unwatch) {
            self.decoder.forget(id);
        }
    }

    async fn report_drops(&mut self) {
        let counts: Vec<u64> = {
            let drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
            match drops.get(&0, 0) {
                Ok(values) => values.iter().copied().collect(),
                Err(_) => return,
            }
        };
        self.last_drops.resize(counts.len(), 0);
        let ts = self.decoder.now();
        let mut lost = Vec::new();
        for (cpu, (now, last)) in counts.iter().zip(self.last_drops.iter_mut()).enumerate() {
            if *now > *last {
                lost.push(Event::new(
                    ts,
                    EventBody::Lost(Lost {
                        count: *now - *last,
                        cpu: Some(cpu as u32),
                    }),
                ));
                *last = *now;
            }
        }
        for event in lost {
            self.send(event).await;
        }
    }
}
