//! The task that reads the ring buffer and the drop counters, and owns the decoder (with
//! everything user space keeps per watched cgroup).
//!
//! Order: the events of one cgroup come after its `container` event, in the stream and in
//! time. The reader may meet a cgroup's first record before it handled that cgroup's `Watch`
//! (it was draining the ring, or waiting on a slow consumer): it then handles the `Watch`
//! first, and the `container` event carries the time the watch was asked for (taken before
//! the kernel was told to report the cgroup), not the time the reader got to it, which can
//! be after the record's.

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
        /// CLOCK_BOOTTIME (the records' clock) just before the kernel was told to report the
        /// cgroup: no record of it can be older. The `container` event's time.
        at_boot_ns: u64,
    },
    /// The cgroup was removed from the kernel's `watched` map: deliver what it queued, then
    /// forget it.
    Unwatch { id: u64 },
}

pub(crate) struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    drops: Arc<Mutex<PerCpuArray<MapData, u64>>>,
    last_drops: Vec<u64>,
    stream: Stream,
}

/// What the reader does with records and control messages, apart from the ring buffer: decode,
/// keep the stream in order, send.
struct Stream {
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
            stream: Stream::new(tx, control, decoder),
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
                msg = self.stream.control.recv() => match msg {
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
        while let Ok(msg) = self.stream.control.try_recv() {
            self.handle_control(msg).await;
        }
        self.drain().await;
        self.report_drops().await;
    }

    async fn handle_control(&mut self, msg: Control) {
        match msg {
            Control::Watch { .. } => self.stream.handle_control(msg).await,
            Control::Unwatch { id } => {
                // Records the kernel queued before the unwatch still need the cgroup's
                // context (its path, for user names).
                self.drain().await;
                self.stream.decoder.forget(id);
            }
        }
    }

    async fn drain(&mut self) {
        loop {
            let (decoded, unknown) = {
                let ring = self.ring.get_mut();
                let Some(item) = ring.next() else { break };
                if self.stream.knows_cgroup_of(&item) {
                    (self.stream.decoder.decode(&item), None)
                } else {
                    (None, Some(item.to_vec()))
                }
            };
            if let Some(event) = decoded {
                self.stream.send(event).await;
            }
            if let Some(bytes) = unknown {
                self.stream.record_of_unknown_cgroup(&bytes).await;
            }
        }
        self.stream.apply_deferred_unwatches();
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
        let ts = self.stream.decoder.now();
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
            self.stream.send(event).await;
        }
    }
}

impl Stream {
    fn new(
        tx: mpsc::Sender<Event>,
        control: mpsc::UnboundedReceiver<Control>,
        decoder: Decoder,
    ) -> Self {
        Stream {
            tx,
            control,
            decoder,
            deferred_unwatch: Vec::new(),
        }
    }

    /// A watch now (its records follow); an unwatch once the drain under way is over (its
    /// records may still be in the ring).
    async fn handle_control(&mut self, msg: Control) {
        match msg {
            Control::Watch {
                id,
                path,
                info,
                at_boot_ns,
            } => {
                self.deferred_unwatch.retain(|d| *d != id);
                self.start_cgroup(id, path, *info, at_boot_ns).await;
            }
            Control::Unwatch { id } => self.deferred_unwatch.push(id),
        }
    }

    fn apply_deferred_unwatches(&mut self) {
        for id in std::mem::take(&mut self.deferred_unwatch) {
            self.decoder.forget(id);
        }
    }

    async fn start_cgroup(&mut self, id: u64, path: PathBuf, info: ContainerInfo, at_boot_ns: u64) {
        self.decoder.watch(id, path);
        let ts = self.decoder.epoch(at_boot_ns);
        self.send(Event::new(ts, EventBody::Container(info))).await;
    }

    /// Whether the decoder knows the record's cgroup (records too short for a header are the
    /// decoder's to count as unreadable).
    fn knows_cgroup_of(&self, record: &[u8]) -> bool {
        raw::read_record::<EvHdr>(record, std::mem::size_of::<EvHdr>())
            .is_none_or(|h| self.decoder.knows(h.cgroup_id))
    }

    /// A record of a cgroup the decoder does not know: its `container` event may still be
    /// queued (the watch is sent before the kernel reports the cgroup), so deliver that first.
    async fn record_of_unknown_cgroup(&mut self, record: &[u8]) {
        while let Ok(msg) = self.control.try_recv() {
            self.handle_control(msg).await;
        }
        if let Some(event) = self.decoder.decode(record) {
            self.send(event).await;
        }
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::decoder::boot_now;
    use crate::raw::{EV_FORK, ForkEv, record_bytes};

    /// The fork of a pod's first process into cgroup `cgroup_id`, stamped `ts` (CLOCK_BOOTTIME).
    fn fork_record(cgroup_id: u64, ts: u64) -> Vec<u8> {
        record_bytes(&ForkEv {
            h: EvHdr {
                kind: EV_FORK,
                pid: 4242,
                ts,
                cgroup_id,
                start: 99,
                tid: 4242,
                flags: 0,
            },
            ppid: 4200,
            ns_pid: 1,
            pstart: 98,
            comm: *b"guardlab\0\0\0\0\0\0\0\0",
        })
    }

    /// The case a recording once showed: the kernel reported a pod's first fork 0.27 ms after
    /// the watch was asked for, and the reader met that record before it had handled the
    /// watch. The container event still comes first, and first in time too.
    #[tokio::test]
    async fn a_record_met_before_its_cgroups_watch_follows_the_container_event_in_time() {
        let (tx, mut events) = mpsc::channel(8);
        let (control, control_rx) = mpsc::unbounded_channel();
        let mut stream = Stream::new(tx, control_rx, Decoder::new(Arc::default()));
        // A millisecond ago the watch was asked for, and 0.27 ms after that the pod's first
        // process forked: both are in the past by the time the reader gets to them.
        let watched_at = boot_now() - 1_000_000;
        let forked_at = watched_at + 270_000;
        control
            .send(Control::Watch {
                id: 7,
                path: "/sys/fs/cgroup/unified/pod".into(),
                info: Box::new(ContainerInfo {
                    cgroup_id: 7,
                    ..Default::default()
                }),
                at_boot_ns: watched_at,
            })
            .unwrap();
        let fork = fork_record(7, forked_at);
        assert!(!stream.knows_cgroup_of(&fork), "the watch is still queued");
        stream.record_of_unknown_cgroup(&fork).await;
        stream.apply_deferred_unwatches();

        let container = events.try_recv().unwrap();
        assert!(
            matches!(&container.body, EventBody::Container(c) if c.cgroup_id == 7),
            "{container:?}"
        );
        let first = events.try_recv().unwrap();
        assert!(
            matches!(&first.body, EventBody::Fork(f) if f.pid == 4242),
            "{first:?}"
        );
        assert!(events.try_recv().is_err());
        assert!(
            container.ts < first.ts,
            "the container event ({}) is older than the fork ({})",
            container.ts,
            first.ts
        );
        assert_eq!(
            first.ts - container.ts,
            270_000,
            "the container event is stamped when the watch was asked for"
        );
        // The cgroup is known now: its next records go straight to the decoder.
        assert!(stream.knows_cgroup_of(&fork_record(7, forked_at + 1)));
    }

    /// An unwatch met while draining waits for the drain's end: the cgroup's records still in
    /// the ring are decoded with its context.
    #[tokio::test]
    async fn an_unwatch_met_while_draining_waits_for_the_drain_to_end() {
        let (tx, mut events) = mpsc::channel(8);
        let (control, control_rx) = mpsc::unbounded_channel();
        let mut stream = Stream::new(tx, control_rx, Decoder::new(Arc::default()));
        let at = boot_now();
        for msg in [
            Control::Watch {
                id: 8,
                path: "/sys/fs/cgroup/unified/pod".into(),
                info: Box::default(),
                at_boot_ns: at,
            },
            Control::Unwatch { id: 8 },
        ] {
            control.send(msg).unwrap();
        }
        stream
            .record_of_unknown_cgroup(&fork_record(8, at + 1))
            .await;
        assert!(stream.knows_cgroup_of(&fork_record(8, at + 2)));
        stream.apply_deferred_unwatches();
        assert!(!stream.knows_cgroup_of(&fork_record(8, at + 3)));
        assert!(matches!(
            events.try_recv().unwrap().body,
            EventBody::Container(_)
        ));
        assert!(matches!(
            events.try_recv().unwrap().body,
            EventBody::Fork(_)
        ));
    }
}
