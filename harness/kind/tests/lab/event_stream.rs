//! The sensor's event stream through lost connections and outages: tried again, given up
//! after the outage limit with a reason, waiting when there is no node to reach.

use super::*;

/// A stream that delivers events goes on after any number of lost connections (a
/// port-forward that drops, a sensor that restarts), spread over longer than the stream's
/// outage limit: each session that delivered is a fresh start, not one more failure.
#[tokio::test]
async fn a_stream_that_delivers_survives_any_number_of_lost_connections() {
    let (fake, sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let options = KindOptions {
        stream_outage_limit: Duration::from_secs(2),
        ..options(dir.path())
    };
    let mut lab = KindLab::with_client(options, fake.client());
    lab.up(&guardlab_lab_api::NoProgress).await.unwrap();
    let mut events = lab.events().await.unwrap();
    until_notebook_listens(&mut events).await;
    for cut in 1..=15 {
        sensor.cut();
        // The stream connects again; the sensor confirms its watch again.
        let event = next(&mut events).await;
        assert!(
            matches!(event.body, EventBody::Container(_)),
            "after cut {cut}: {event:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lab.event_stream_failure(), None);

    // Then the sensor is out of reach for a few tries: an outage since the last good session,
    // not since the stream started (longer ago than the limit).
    route_sensor(&fake, nowhere().await);
    let before = sensor_forwards(&fake);
    sensor.cut();
    for waited in 0.. {
        if sensor_forwards(&fake) >= before + 3 {
            break;
        }
        assert!(
            waited < 2000 && lab.event_stream_failure().is_none(),
            "the stream stopped trying: {:?}",
            lab.event_stream_failure()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    route_sensor(&fake, sensor.address);
    let event = next(&mut events).await;
    assert!(matches!(event.body, EventBody::Container(_)), "{event:?}");
    assert_eq!(lab.event_stream_failure(), None);

    // And it still opens the gate of a pod that replaces the notebook's.
    let old = lab.status().await.unwrap().unwrap().pods[0].name.clone();
    lab.carry_out(&LabAction::KillPod {
        namespace: "cryptominer".into(),
        name: old.clone(),
    })
    .await
    .unwrap();
    let seen = until_notebook_listens(&mut events).await;
    assert!(
        seen[0].starts_with("container ") && seen[1].starts_with("exec "),
        "{seen:?}"
    );
    let new = lab.status().await.unwrap().unwrap().pods[0].name.clone();
    assert_ne!(new, old);
    assert!(fake.gates_opened().contains(&format!("cryptominer/{new}")));
    lab.down(&guardlab_lab_api::NoProgress).await.unwrap();
}

/// A sensor out of reach for many tries in a row (its pod restarting, the API server's
/// port-forwards failing) is tried again, ever less often, until it is back.
#[tokio::test]
async fn a_sensor_out_of_reach_for_many_tries_is_waited_for() {
    let (fake, sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let options = KindOptions {
        stream_backoff_max: Duration::from_millis(100),
        ..options(dir.path())
    };
    let mut lab = KindLab::with_client(options, fake.client());
    lab.up(&guardlab_lab_api::NoProgress).await.unwrap();
    let mut events = lab.events().await.unwrap();
    until_notebook_listens(&mut events).await;

    route_sensor(&fake, nowhere().await);
    let before = sensor_forwards(&fake);
    sensor.cut();
    let mut waited = 0;
    while sensor_forwards(&fake) < before + 15 {
        assert!(
            waited < 1500,
            "the stream stopped trying after {} tries; its last error: {:?}",
            sensor_forwards(&fake) - before,
            lab.event_stream_last_error()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    assert_eq!(lab.event_stream_failure(), None);
    assert!(
        lab.event_stream_last_error()
            .is_some_and(|e| e.contains("closed the event stream")),
        "{:?}",
        lab.event_stream_last_error()
    );

    // Back: the stream connects again and the sensor confirms its watch again.
    route_sensor(&fake, sensor.address);
    let event = next(&mut events).await;
    assert!(matches!(event.body, EventBody::Container(_)), "{event:?}");
    lab.down(&guardlab_lab_api::NoProgress).await.unwrap();
}

/// A sensor out of reach for longer than the outage limit: the stream gives up, its channel
/// closes, and the lab says why (what `lab up` prints, what a scenario reports).
#[tokio::test]
async fn a_long_outage_ends_the_stream_and_says_why() {
    let (fake, sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let options = KindOptions {
        stream_backoff_max: Duration::from_millis(100),
        stream_outage_limit: Duration::from_secs(1),
        ..options(dir.path())
    };
    let mut lab = KindLab::with_client(options, fake.client());
    lab.up(&guardlab_lab_api::NoProgress).await.unwrap();
    let gave_up = lab.event_stream_gave_up();
    let mut events = lab.events().await.unwrap();
    until_notebook_listens(&mut events).await;
    assert_eq!(lab.event_stream_failure(), None);

    route_sensor(&fake, nowhere().await);
    sensor.cut();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("the channel closes once the stream gives up");
        if event.is_none() {
            break;
        }
    }
    let why = tokio::time::timeout(Duration::from_secs(5), gave_up)
        .await
        .expect("who waits for the failure learns it");
    for expected in [
        "the sensor's event stream stopped: no working connection to the guardlab-sensor pod on node \
         guardlab-control-plane for 1s",
        "the last: the sensor on node guardlab-control-plane closed the event stream",
        "replaced notebook pods stay behind their start gates",
    ] {
        assert!(why.contains(expected), "missing `{expected}` in: {why}");
    }
    assert_eq!(lab.event_stream_failure(), Some(why.clone()));
    // Asking for the events again starts a new stream (the sensor is back).
    route_sensor(&fake, sensor.address);
    let mut events = lab.events().await.unwrap();
    assert!(matches!(
        next(&mut events).await.body,
        EventBody::Container(_)
    ));
    assert_eq!(lab.event_stream_failure(), None);
    lab.down(&guardlab_lab_api::NoProgress).await.unwrap();
}

/// No notebook pod on a node (its replacement cannot be scheduled): there is no sensor to
/// reach, and that is no outage of the sensor; the stream waits for a node.
#[tokio::test]
async fn a_stream_without_a_notebook_pod_on_a_node_waits_for_one() {
    let (fake, _sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let options = KindOptions {
        stream_backoff_max: Duration::from_millis(100),
        stream_outage_limit: Duration::from_secs(1),
        ..options(dir.path())
    };
    let first = {
        let mut other = KindLab::with_client(options.clone(), fake.client());
        other.up(&guardlab_lab_api::NoProgress).await.unwrap().pods[0].clone()
    };
    fake.set_rollout("jupyter-notebook", Rollout::Unschedulable);
    let pods =
        kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(fake.client(), "cryptominer");
    pods.delete(&first.name, &Default::default()).await.unwrap();
    let before = sensor_forwards(&fake);
    let mut later = KindLab::with_client(options, fake.client());
    let _events = later.events().await.unwrap();
    // Twice the outage limit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(later.event_stream_failure(), None);
    assert_eq!(
        sensor_forwards(&fake),
        before,
        "no sensor was tried: {:?}",
        later.event_stream_last_error()
    );
    later.down(&guardlab_lab_api::NoProgress).await.unwrap();
}
