//! The sensor's events inside the lab daemon: published by the sensor, fanned out to every
//! client of the control socket, with a bounded history so that a client that subscribes late
//! still gets what came before.

use std::sync::Mutex;

use guardlab_events::Event;
use tokio::sync::broadcast;

/// The sensor's events, to every client, with a bounded history for replays. Publishing and
/// subscribing take the same lock, so a replaying client gets every event exactly once.
pub struct EventBus {
    inner: Mutex<History>,
    live: broadcast::Sender<Event>,
    /// Events dropped for clients that took them too slowly (each client is told with a
    /// `lost` event).
    lagged: std::sync::atomic::AtomicU64,
}

/// Events kept for replay: every `container` event, and the latest others up to a bound.
#[derive(Default)]
struct History {
    containers: Vec<Event>,
    others: std::collections::VecDeque<Event>,
    dropped: u64,
}

const HISTORY_LIMIT: usize = 200_000;

/// Events a slow subscriber may fall behind before it loses some (counted, and said as a `lost`
/// event). A pod can burst: 100,000 connects made ~100,000 events in 0.4 s, past 65,536.
const LIVE_CAPACITY: usize = 131_072;

impl EventBus {
    pub fn new() -> EventBus {
        EventBus {
            inner: Mutex::new(History::default()),
            live: broadcast::channel(LIVE_CAPACITY).0,
            lagged: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn publish(&self, event: Event) {
        let mut history = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(event.body, guardlab_events::EventBody::Container(_)) {
            history.containers.push(event.clone());
        } else {
            if history.others.len() >= HISTORY_LIMIT {
                history.others.pop_front();
                history.dropped += 1;
            }
            history.others.push_back(event.clone());
        }
        // No subscriber is fine.
        let _ = self.live.send(event);
    }

    /// A client was too slow and missed `count` events (its receiver lagged).
    pub fn note_lagged(&self, count: u64) {
        self.lagged
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
    }

    /// (events dropped for slow clients, events no longer in the replay history) so far.
    pub fn losses(&self) -> (u64, u64) {
        let history = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (
            self.lagged.load(std::sync::atomic::Ordering::Relaxed),
            history.dropped,
        )
    }

    /// A live receiver, and (with `replay`) what came before it: containers first, a `lost`
    /// event when the bound dropped some, then the rest in order.
    pub fn subscribe(&self, replay: bool) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let history = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let receiver = self.live.subscribe();
        if !replay {
            return (Vec::new(), receiver);
        }
        let mut out = history.containers.clone();
        if history.dropped > 0 {
            let ts = history.others.front().map(|e| e.ts).unwrap_or(0);
            out.push(Event::new(
                ts,
                guardlab_events::EventBody::Lost(guardlab_events::Lost {
                    count: history.dropped,
                    cpu: None,
                }),
            ));
        }
        out.extend(history.others.iter().cloned());
        (out, receiver)
    }
}

impl Default for EventBus {
    fn default() -> EventBus {
        EventBus::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaying_subscriber_gets_every_event_once_containers_first() {
        let bus = EventBus::new();
        let exit = |pid| {
            Event::new(
                pid as u64,
                guardlab_events::EventBody::Exit(guardlab_events::ProcessExit {
                    key: guardlab_events::ProcessKey(pid, 1),
                    cgroup_id: 7,
                    pid,
                    code: Some(0),
                    signal: None,
                }),
            )
        };
        bus.publish(exit(1));
        bus.publish(Event::new(
            2,
            guardlab_events::EventBody::Container(guardlab_events::ContainerInfo {
                cgroup_id: 7,
                ..Default::default()
            }),
        ));
        let (replayed, mut live) = bus.subscribe(true);
        bus.publish(exit(3));
        assert_eq!(
            replayed.iter().map(|e| e.ts).collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert_eq!(live.try_recv().unwrap().ts, 3);
        assert!(live.try_recv().is_err());
        let (none, _) = bus.subscribe(false);
        assert!(none.is_empty());
    }
}
