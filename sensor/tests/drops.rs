//! A ring buffer too small for the load loses events, and says so.

mod common;

use std::time::Duration;

use common::*;
use guardlab_sensor::{EventBody, SensorConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_a_tiny_ring_buffer_reports_every_drop_as_lost_events() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("drops");
    // One page of ring buffer and a one-event channel nobody reads during the storm: the reader
    // blocks, the ring buffer fills within a few execs, and the kernel must count the rest.
    let config = SensorConfig {
        ring_buffer_bytes: 4096,
        channel_capacity: 1,
        ..Default::default()
    };
    let (mut sensor, mut events) = start(config);
    sensor.watch(cg.path(), info("drops")).unwrap();

    let out = run(command_in(
        cg.path(),
        PROBE,
        &["exec-storm", "200", "/bin/true"],
    ))
    .await;
    assert!(out.status.success(), "{}", stdout(&out));
    let drops = sensor.drops();
    assert!(
        drops > 0,
        "200 execs into a 4 KiB ring buffer nobody drained dropped nothing"
    );

    // Every drop arrives as `lost`, in total exactly what the kernel counted.
    let lost_sum = |seen: &[guardlab_sensor::Event]| -> u64 {
        seen.iter()
            .filter_map(|e| match &e.body {
                EventBody::Lost(l) => Some(l.count),
                _ => None,
            })
            .sum()
    };
    events
        .wait_for(
            "lost events adding up to the drops",
            Duration::from_secs(10),
            |seen| lost_sum(seen) >= drops,
        )
        .await;
    // stop() delivers what is left (and a final `lost` if more were dropped meanwhile):
    // keep receiving while it runs.
    let stopping = tokio::spawn(sensor.stop());
    while let Some(e) = events.rx.recv().await {
        events.seen.push(e);
    }
    let stats = stopping.await.unwrap().unwrap();
    let total = stats.dropped;
    assert_eq!(
        lost_sum(&events.seen),
        total,
        "lost events and the kernel's counters disagree"
    );
    // Every event that arrived was counted as delivered, the `lost` ones too; nothing was
    // unreadable, and the receiver was there to the end.
    assert_eq!(stats.delivered, events.seen.len() as u64, "{stats:?}");
    assert_eq!(
        (stats.unreadable_records, stats.undelivered),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.lost(), total);
    assert!(
        events
            .seen
            .iter()
            .any(|e| matches!(&e.body, EventBody::Lost(l) if l.cpu.is_some()))
    );
}
