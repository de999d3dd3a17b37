//! What the lab lost or could not do ([`LabCounters`]): read from the sensor and the event
//! bus for `status`, and written to the daemon's log when the lab is ready, whenever they
//! change, and when the daemon stops, so that the log always says whether events were lost.

use std::sync::Arc;
use std::time::Duration;

use super::Daemon;
use super::report::log;
use crate::local::protocol::LabCounters;

/// How often the counters are looked at for the log.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The counters now.
pub(super) fn of(daemon: &Daemon) -> LabCounters {
    let (client_lagged, history_dropped) = daemon.events.losses();
    let mut counters = LabCounters {
        client_lagged,
        history_dropped,
        ..LabCounters::default()
    };
    if let Some(sensor) = daemon
        .sensor
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        let stats = sensor.stats();
        counters.sensor_delivered = stats.delivered;
        counters.sensor_dropped = stats.dropped;
        counters.sensor_unreadable = stats.unreadable_records;
        counters.kill_failures = stats.kill_failures;
        counters.dns_truncated = stats.dns_truncated;
        counters.dns_unreadable = stats.dns_unreadable;
    }
    counters
}

/// Logs the counters now and returns what it said: called before the lab is said to be ready,
/// so that the log holds the line by the time anyone can ask for the lab's status.
pub(super) fn log_now(daemon: &Daemon) -> LabCounters {
    let said = of(daemon);
    log(&format!("events: {}", said.describe()));
    said
}

/// After [`log_now`] said `said`: logs the counters each time something other than the
/// delivered count changed.
pub(super) async fn log_changes(daemon: Arc<Daemon>, mut said: LabCounters) {
    let mut tick = tokio::time::interval(LOG_EVERY);
    loop {
        tick.tick().await;
        let now = of(&daemon);
        let delivered_only = LabCounters {
            sensor_delivered: said.sensor_delivered,
            ..now
        } == said;
        if !delivered_only {
            log(&format!("events: {}", now.describe()));
            said = now;
        }
    }
}
