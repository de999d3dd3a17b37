//! Rollouts that fail: each failure names the pod, the container and the reason, and `up`
//! removes what it applied.

use super::*;

#[tokio::test]
async fn an_image_pull_failure_names_pod_container_reason_and_removes_what_was_applied() {
    let fake = FakeApi::start().await;
    fake.set_rollout("jupyter-notebook", Rollout::ImagePullBackOff);
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let err = lab
        .up(&guardlab_lab_api::NoProgress)
        .await
        .unwrap_err()
        .to_string();
    for expected in [
        "Deployment cryptominer/jupyter-notebook cannot become ready: pod cryptominer/jupyter-notebook-",
        "container minimal-notebook: ImagePullBackOff (Back-off pulling image \"jupyter/minimal-notebook:latest\")",
        "the node cannot get the image",
        "removed what this run created: Service cryptominer/jupyter-notebook, Deployment cryptominer/jupyter-notebook, \
         DaemonSet cryptominer/guardlab-sensor, ServiceAccount cryptominer/guardlab-sensor, Namespace cryptominer",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in: {err}");
    }
    assert!(fake.paths().is_empty(), "left behind: {:?}", fake.paths());
    assert!(!lab.options().state_file().exists());
    assert!(lab.notebook_address().is_none());
}

#[tokio::test]
async fn a_crash_looping_sensor_is_named_with_its_last_exit_and_where_to_look() {
    let fake = FakeApi::start().await;
    fake.set_rollout("guardlab-sensor", Rollout::CrashLoopBackOff);
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let err = lab
        .up(&guardlab_lab_api::NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("DaemonSet cryptominer/guardlab-sensor cannot become ready"),
        "{err}"
    );
    assert!(err.contains("container sensor: CrashLoopBackOff"), "{err}");
    assert!(err.contains("last exit code 1 (Error)"), "{err}");
    assert!(
        err.contains("kubectl logs -n cryptominer guardlab-sensor-"),
        "{err}"
    );
    assert!(fake.paths().is_empty(), "left behind: {:?}", fake.paths());
}

#[tokio::test]
async fn an_unschedulable_pod_is_reported_at_the_deadline() {
    let fake = FakeApi::start().await;
    fake.set_rollout("jupyter-notebook", Rollout::Unschedulable);
    let dir = tempfile::tempdir().unwrap();
    let options = KindOptions {
        rollout_timeout: Duration::from_secs(1),
        ..options(dir.path())
    };
    let mut lab = KindLab::with_client(options, fake.client());
    let err = lab
        .up(&guardlab_lab_api::NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "the notebook's container did not start within 1s: pod cryptominer/jupyter-notebook-"
        ),
        "{err}"
    );
    assert!(
        err.contains("is Pending, not scheduled: Unschedulable: 0/1 nodes are available: 1 Insufficient memory."),
        "{err}"
    );
    assert!(err.contains("removed what this run created"), "{err}");
    assert!(fake.paths().is_empty(), "left behind: {:?}", fake.paths());
    assert!(!fake.timeline().iter().any(|e| e.starts_with("portforward")));
}
