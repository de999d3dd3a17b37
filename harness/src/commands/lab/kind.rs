//! `guardlab lab ... --backend kind`: the same verbs on a Kubernetes cluster.
//!
//! `lab up` stays in the foreground once the lab is up: the notebook's port-forward
//! (127.0.0.1:1234) lives in this process, so leaving would end it. Ctrl-C (or SIGTERM) stops
//! the forward and exits cleanly; the cluster and the lab stay up until `lab down`.

use std::future::Future;

use guardlab_kind::{KindLab, KindOptions, Target};
use guardlab_lab::{Lab, LabInfo};

use super::{LabVerb, block_on, drive};
use crate::cli::LabArgs;
use crate::console::{self, ConsoleProgress};
use crate::report::{CommandResult, Failure, Outcome};

fn options(args: &LabArgs) -> KindOptions {
    let mut options = KindOptions::default();
    if let Some(context) = &args.context {
        options.target = Target::Context {
            context: context.clone(),
        };
    }
    if let Some(namespace) = &args.namespace {
        options.namespace = namespace.clone();
    }
    options
}

pub fn run(verb: LabVerb, args: &LabArgs) -> CommandResult {
    let options = options(args);
    if args.dry_run {
        // The plan touches nothing: no Docker, no cluster, no root.
        print!("{}", guardlab_kind::plan(&options)?);
        return Ok(Outcome::Clean);
    }
    match verb {
        LabVerb::Up => block_on(async move {
            up_and_hold(
                KindLab::new(options),
                stop_signal(),
                KindLab::event_stream_gave_up,
            )
            .await
        }),
        verb => block_on(async move { drive(KindLab::new(options), verb).await }),
    }
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// What `lab up` prints once the lab is up and it holds the forward.
fn holding_notice(info: &LabInfo) -> String {
    let mut text = format!(
        "Lab ({} backend) is up.\nOpen the notebook at {}\n",
        info.backend, info.notebook_url
    );
    for pod in &info.pods {
        text.push_str(&format!(
            "  pod {}/{}  container {}  image {}\n",
            pod.namespace, pod.name, pod.container_name, pod.image
        ));
    }
    text.push_str(&format!(
        "This command keeps the port-forward to {} open: leave it running while you use the notebook.\n\
         Ctrl-C stops the forward; the cluster and the lab stay up (`guardlab lab up --backend kind` \
         forwards again, `guardlab lab down --backend kind` removes them).\n",
        info.notebook_url
    ));
    text
}

/// The warning `lab up` gives when the sensor's event stream gave up while it holds the
/// forward (the stream's own text says what stopped and what that means for replaced pods).
fn stream_failure_notice(why: &str) -> String {
    format!("{why}\nThe notebook forward stays up until Ctrl-C.")
}

/// Brings the lab up, then holds its port-forward until `stop` completes. The lab is not
/// taken down: only the forward (and the event stream, if any) end with this process. If the
/// lab's event stream gives up meanwhile (`stream_gave_up`), that is said at once, and the
/// forward is held all the same.
async fn up_and_hold<L: Lab, F: Future<Output = String>>(
    mut lab: L,
    stop: impl Future<Output = ()>,
    stream_gave_up: impl FnOnce(&L) -> F,
) -> CommandResult {
    let info = {
        // Done with before anything else is printed: its live line stays as it is.
        let progress = ConsoleProgress { quiet: false };
        lab.up(&progress).await.map_err(Failure::from)?
    };
    print!("{}", holding_notice(&info));
    let gave_up = stream_gave_up(&lab);
    tokio::pin!(stop);
    tokio::select! {
        _ = &mut stop => {}
        why = gave_up => {
            console::warning(&stream_failure_notice(&why));
            stop.await;
        }
    }
    // Dropping the lab ends its port-forward task.
    drop(lab);
    println!(
        "\nPort-forward stopped. The lab is still up; `guardlab lab down --backend kind` removes it."
    );
    Ok(Outcome::Clean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardlab_events::Event;
    use guardlab_lab::{Backend, LabAction, LabError, PodInfo, Progress};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::{mpsc, oneshot};

    /// Counts what is asked of it; dropping it is what ends a real lab's forward.
    struct CountingLab {
        ups: Arc<AtomicUsize>,
        downs: Arc<AtomicUsize>,
        drops: Arc<AtomicUsize>,
    }

    impl Drop for CountingLab {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Lab for CountingLab {
        fn backend(&self) -> Backend {
            Backend::Kind
        }
        async fn up(&mut self, _: &dyn Progress) -> Result<LabInfo, LabError> {
            self.ups.fetch_add(1, Ordering::SeqCst);
            Ok(LabInfo {
                backend: Backend::Kind,
                notebook_url: "http://127.0.0.1:1234/".into(),
                pods: vec![PodInfo {
                    namespace: "cryptominer".into(),
                    name: "jupyter-notebook-x".into(),
                    ..Default::default()
                }],
            })
        }
        async fn status(&self) -> Result<Option<LabInfo>, LabError> {
            Ok(None)
        }
        async fn down(&mut self, _: &dyn Progress) -> Result<(), LabError> {
            self.downs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn events(&mut self) -> Result<mpsc::Receiver<Event>, LabError> {
            Err(LabError::NotUp {
                backend: Backend::Kind,
                detail: "not here".into(),
            })
        }
        async fn carry_out(&mut self, _: &LabAction) -> Result<(), LabError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn up_holds_the_forward_until_stopped_and_leaves_the_lab_up() {
        let (ups, downs, drops) = Default::default();
        let lab = CountingLab {
            ups: Arc::clone(&ups),
            downs: Arc::clone(&downs),
            drops: Arc::clone(&drops),
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let held = tokio::spawn(up_and_hold(
            lab,
            async move {
                let _ = stop_rx.await;
            },
            // The event stream gives up at once: the forward is held all the same.
            |_: &CountingLab| async { "the sensor's event stream stopped".to_string() },
        ));
        // Up, and still holding (the lab, hence its forward, is alive) until told to stop.
        for _ in 0..50 {
            if ups.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(ups.load(Ordering::SeqCst), 1);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !held.is_finished(),
            "lab up returned while it should hold the forward"
        );
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        stop_tx.send(()).unwrap();
        assert!(matches!(held.await.unwrap(), Ok(Outcome::Clean)));
        assert_eq!(drops.load(Ordering::SeqCst), 1, "the forward ends");
        assert_eq!(downs.load(Ordering::SeqCst), 0, "the lab stays up");
    }

    #[test]
    fn a_stream_that_gave_up_is_said_as_a_warning() {
        let text = console::warning_line(&stream_failure_notice(
            "the sensor's event stream stopped: no working connection",
        ));
        assert!(
            text.starts_with("warning: the sensor's event stream stopped: no working connection\n"),
            "{text}"
        );
    }

    #[test]
    fn the_notice_says_where_the_notebook_is_and_what_ctrl_c_does() {
        let text = holding_notice(&LabInfo {
            backend: Backend::Kind,
            notebook_url: "http://127.0.0.1:1234/".into(),
            pods: vec![],
        });
        assert!(
            text.contains("Open the notebook at http://127.0.0.1:1234/"),
            "{text}"
        );
        assert!(text.contains("Ctrl-C stops the forward"), "{text}");
        assert!(text.contains("guardlab lab down --backend kind"), "{text}");
    }
}
