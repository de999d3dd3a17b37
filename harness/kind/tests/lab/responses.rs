//! Response actions: a pod deleted through the API (only in the lab's namespace), processes
//! killed by the sensor on the notebook's node.

use super::*;

#[tokio::test]
async fn kill_pod_deletes_it_through_the_api_and_only_in_the_lab_namespace() {
    let (fake, _sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let info = lab.up(&guardlab_lab_api::NoProgress).await.unwrap();
    let pod = info.pods[0].name.clone();
    lab.carry_out(&LabAction::KillPod {
        namespace: "cryptominer".into(),
        name: pod.clone(),
    })
    .await
    .unwrap();
    let delete = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .unwrap();
    assert_eq!(
        delete.uri.split('?').next().unwrap(),
        format!("/api/v1/namespaces/cryptominer/pods/{pod}")
    );
    // The Deployment brought a new pod.
    let after = lab.status().await.unwrap().unwrap();
    assert_eq!(after.pods.len(), 1);
    assert_ne!(after.pods[0].name, pod);

    let err = lab
        .carry_out(&LabAction::KillPod {
            namespace: "kube-system".into(),
            name: "coredns".into(),
        })
        .await;
    let err = err.unwrap_err().to_string();
    assert!(
        err.contains("refusing to delete pod kube-system/coredns"),
        "{err}"
    );
    let err = lab
        .carry_out(&LabAction::KillPod {
            namespace: "cryptominer".into(),
            name: "nope".into(),
        })
        .await;
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("deleting pod cryptominer/nope")
    );
    lab.down(&guardlab_lab_api::NoProgress).await.unwrap();
}

#[tokio::test]
async fn events_and_kills_go_through_the_sensor_on_the_notebooks_node() {
    let (fake, sensor) = cluster().await;
    let requests = sensor.requests.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let info = lab.up(&guardlab_lab_api::NoProgress).await.unwrap();
    let pod = &info.pods[0];

    let mut events = lab.events().await.unwrap();
    let event = next(&mut events).await;
    let EventBody::Container(container) = event.body else {
        panic!("{event:?}")
    };
    assert_eq!(container.cgroup_id, 4242);
    assert_eq!(container.container_id, pod.container_id);
    assert_eq!(container.pod_name, pod.name);
    assert_eq!(container.namespace, "cryptominer");
    assert_eq!(container.machine, NODE);
    assert_eq!(container.image, "jupyter/minimal-notebook:latest");
    assert_eq!(
        container.namespace_labels["app.kubernetes.io/part-of"],
        "guardlab"
    );
    let SensorRequest::Subscribe { containers } = requests.lock().unwrap()[0].1.clone() else {
        panic!()
    };
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].pod_labels["app"], "jupyter-notebook");

    lab.carry_out(&LabAction::KillProcess { pid: 31337 })
        .await
        .unwrap();
    lab.carry_out(&LabAction::KillProcessTree { pid: 31338 })
        .await
        .unwrap();
    lab.carry_out(&LabAction::KillProcessGroup { pid: 31339 })
        .await
        .unwrap();
    let lines: Vec<String> = requests
        .lock()
        .unwrap()
        .iter()
        .map(|(line, _)| line.clone())
        .collect();
    assert!(
        lines.contains(&r#"{"op":"kill_group","pid":31339}"#.to_string()),
        "the group kill's wire form: {lines:?}"
    );
    let seen: Vec<SensorRequest> = requests
        .lock()
        .unwrap()
        .iter()
        .map(|(_, request)| request.clone())
        .collect();
    assert!(
        seen.contains(&SensorRequest::KillGroup { pid: 31339 }),
        "{seen:?}"
    );
    assert!(
        seen.contains(&SensorRequest::Kill {
            pid: 31337,
            tree: false
        }),
        "{seen:?}"
    );
    assert!(
        seen.contains(&SensorRequest::Kill {
            pid: 31338,
            tree: true
        }),
        "{seen:?}"
    );
    let to_sensor: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.uri.contains("ports=7070"))
        .map(|r| r.uri)
        .collect();
    assert!(to_sensor.len() >= 4, "{to_sensor:?}");
    assert!(
        to_sensor
            .iter()
            .all(|u| u.starts_with("/api/v1/namespaces/cryptominer/pods/guardlab-sensor-")),
        "{to_sensor:?}"
    );
    drop(events);
    lab.down(&guardlab_lab_api::NoProgress).await.unwrap();
}

#[tokio::test]
async fn a_kill_the_sensor_cannot_reach_is_an_error() {
    let (fake, _sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    lab.up(&guardlab_lab_api::NoProgress).await.unwrap();
    // From now on nothing listens where the sensor's port goes: the port-forward reports an error.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = gone.local_addr().unwrap();
    drop(gone);
    route_sensor(&fake, nowhere);
    let err = lab
        .carry_out(&LabAction::KillProcess { pid: 1 })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sensor on node guardlab-control-plane"),
        "{err}"
    );
    lab.down(&guardlab_lab_api::NoProgress).await.unwrap();
}
