//! How long each deviation took to be acted on (issue 16): from the kernel's event (`ts`, the
//! sensor's clock) to the engine's decision, the flag raised, the kill carried out and the
//! process gone (its exit event, also the kernel's clock). The runner reads the wall clock
//! (the same epoch as `ts`) at each of those moments and hands it in: this module reads no
//! clock itself, and the engine none at all.
//!
//! A replay has no wall clock of the live run: its decision, flag and kill times are not
//! measured (`clock: recording`, those figures absent), and only what the recording's own
//! kernel times say is reported: from the deviant event to the exit of the process a kill
//! aimed at (the live run's kill, recorded as an exit event).
//!
//! Nothing here goes into snapshots: the figures differ from run to run.

use std::collections::HashMap;

use guardlab_engine::deviation::Finding;
use guardlab_engine::model::DeviationType;
use guardlab_events::{Event, EventBody, ProcessKey};
use serde::Serialize;

/// Deviations whose figures a report keeps (an exec storm of deviant programs may make
/// hundreds of thousands); past it they are counted in `omitted`.
pub const MAX_ENTRIES: usize = 50_000;

/// Where the figures' clock came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyClock {
    /// A live run: the runner's wall clock at each moment.
    Live,
    /// A replay: only the recording's kernel times (event to process gone).
    Recording,
}

/// One deviation occurrence the engine acted on (a new deviation, a flag, a kill), in
/// milliseconds after its kernel event. Figures not measured (a replay) or that did not happen
/// (no flag, no kill) are absent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviationLatency {
    pub deviation_uid: String,
    #[serde(rename = "type")]
    pub kind: DeviationType,
    pub pid: u32,
    /// The kernel event's time, nanoseconds since the epoch.
    pub event_ts_ns: u64,
    /// The engine returned its decision (the runner's clock after `observe`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_ms: Option<f64>,
    /// The flag was raised (in the store, said on the console).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag_ms: Option<f64>,
    /// The lab reported the kill carried out (user space).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_ms: Option<f64>,
    /// The process's exit event (kernel time), for a process a kill aimed at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gone_ms: Option<f64>,
    /// The sensor's exec allow-list killed it at exec, in the kernel.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub killed_at_exec: bool,
}

/// The spread of one figure.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    /// Nearest-rank percentiles of `values` (milliseconds); `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut sorted: Vec<f64> = values.into_iter().collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        Some(Spread {
            count: sorted.len(),
            p50_ms: percentile(&sorted, 50.0),
            p99_ms: percentile(&sorted, 99.0),
            max_ms: sorted[sorted.len() - 1],
        })
    }

    /// `p50 1.2 p99 8.0 max 9.1 ms (40)`.
    pub fn describe(&self) -> String {
        format!(
            "p50 {:.1} p99 {:.1} max {:.1} ms ({})",
            self.p50_ms, self.p99_ms, self.max_ms, self.count
        )
    }
}

/// The nearest-rank `p`th percentile of sorted, non-empty `sorted`: the smallest value with at
/// least `p`% of the values at or below it.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `latency` in the JSON report: every figure, and their spreads.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyReport {
    pub clock: LatencyClock,
    pub to_decision: Option<Spread>,
    pub to_flag: Option<Spread>,
    pub to_kill: Option<Spread>,
    pub to_gone: Option<Spread>,
    /// Occurrences past [`MAX_ENTRIES`], not in `deviations` nor the spreads.
    pub omitted: u64,
    pub deviations: Vec<DeviationLatency>,
}

impl LatencyReport {
    /// The summary's lines: nothing when no deviation was acted on.
    pub fn describe(&self) -> Vec<String> {
        if self.deviations.is_empty() {
            return Vec::new();
        }
        let mut lines = vec![match self.clock {
            LatencyClock::Live => format!(
                "Latency, from the kernel's event ({} deviations acted on{}):",
                self.deviations.len(),
                omitted(self.omitted)
            ),
            LatencyClock::Recording => format!(
                "Latency ({} deviations acted on{}): a replay has no clock of the live run, so \
                 decision, flag and kill times are not measured; from the recording's kernel times:",
                self.deviations.len(),
                omitted(self.omitted)
            ),
        }];
        for (what, spread) in [
            ("engine decision", &self.to_decision),
            ("flag raised", &self.to_flag),
            ("kill carried out", &self.to_kill),
            ("process gone", &self.to_gone),
        ] {
            if let Some(s) = spread {
                lines.push(format!("  {what:<17} {}", s.describe()));
            }
        }
        lines
    }
}

fn omitted(n: u64) -> String {
    match n {
        0 => String::new(),
        n => format!("; {n} more not kept"),
    }
}

/// The runner's record of the figures, as a run goes.
pub struct LatencyRecorder {
    clock: LatencyClock,
    entries: Vec<DeviationLatency>,
    /// Entries whose process a kill aimed at, by process, until its exit event.
    awaiting_exit: HashMap<ProcessKey, Vec<usize>>,
    omitted: u64,
}

/// An entry of the recorder (see [`LatencyRecorder::finding`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryId(usize);

fn ms_after(event_ts_ns: u64, now_ns: u64) -> f64 {
    (now_ns as i128 - event_ts_ns as i128) as f64 / 1e6
}

impl LatencyRecorder {
    pub fn new(clock: LatencyClock) -> Self {
        LatencyRecorder {
            clock,
            entries: Vec::new(),
            awaiting_exit: HashMap::new(),
            omitted: 0,
        }
    }

    /// The engine's `finding` for `event`, decided at `decided_ns` (the wall clock after the
    /// engine returned; `None` in a replay). An occurrence the engine did nothing about (a
    /// deviation seen again in audit mode) is not kept.
    pub fn finding(
        &mut self,
        event: &Event,
        finding: &Finding,
        decided_ns: Option<u64>,
    ) -> Option<EntryId> {
        let killed_at_exec = matches!(&event.body, EventBody::Exec(e) if e.killed);
        let initiated = finding.decisions.iter().any(|d| d.initiated);
        if !(finding.new || !finding.flags.is_empty() || initiated || killed_at_exec) {
            return None;
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.omitted += 1;
            return None;
        }
        let id = self.entries.len();
        self.entries.push(DeviationLatency {
            deviation_uid: finding.deviation_uid.clone(),
            kind: finding.kind,
            pid: finding.process.pid(),
            event_ts_ns: event.ts,
            decided_ms: decided_ns.map(|now| ms_after(event.ts, now)),
            flag_ms: None,
            kill_ms: None,
            gone_ms: None,
            killed_at_exec,
        });
        if initiated || killed_at_exec {
            self.awaiting_exit
                .entry(finding.process)
                .or_default()
                .push(id);
        }
        Some(EntryId(id))
    }

    /// The entry's flag was raised at `now_ns`.
    pub fn flagged(&mut self, entry: EntryId, now_ns: Option<u64>) {
        let e = &mut self.entries[entry.0];
        if e.flag_ms.is_none() {
            e.flag_ms = now_ns.map(|now| ms_after(e.event_ts_ns, now));
        }
    }

    /// The lab said the entry's kill was carried out at `now_ns`.
    pub fn killed(&mut self, entry: EntryId, now_ns: Option<u64>) {
        let e = &mut self.entries[entry.0];
        if e.kill_ms.is_none() {
            e.kill_ms = now_ns.map(|now| ms_after(e.event_ts_ns, now));
        }
    }

    /// Any event: an exit ends the wait of the entries whose kill aimed at its process.
    pub fn event(&mut self, event: &Event) {
        if let EventBody::Exit(exit) = &event.body
            && let Some(ids) = self.awaiting_exit.remove(&exit.key)
        {
            for id in ids {
                let e = &mut self.entries[id];
                e.gone_ms = Some(ms_after(e.event_ts_ns, event.ts));
            }
        }
    }

    pub fn report(&self) -> LatencyReport {
        let spread = |figure: fn(&DeviationLatency) -> Option<f64>| {
            Spread::of(self.entries.iter().filter_map(figure))
        };
        LatencyReport {
            clock: self.clock,
            to_decision: spread(|e| e.decided_ms),
            to_flag: spread(|e| e.flag_ms),
            to_kill: spread(|e| e.kill_ms),
            to_gone: spread(|e| e.gone_ms),
            omitted: self.omitted,
            deviations: self.entries.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardlab_events::{ProcessExec, ProcessExit};

    #[test]
    fn percentiles_are_nearest_rank() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 50.0), 50.0);
        assert_eq!(percentile(&hundred, 99.0), 99.0);
        assert_eq!(percentile(&hundred, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 50.0), 7.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        // Of three, the median is the second; p99 is the largest.
        assert_eq!(percentile(&[1.0, 2.0, 30.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 30.0], 99.0), 30.0);
        // Unsorted input is sorted first; p0 is the smallest.
        let s = Spread::of([5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.count, s.p50_ms, s.p99_ms, s.max_ms), (5, 3.0, 5.0, 5.0));
        assert_eq!(percentile(&[1.0, 2.0], 0.0), 1.0);
        assert_eq!(Spread::of([]), None);
        assert_eq!(s.describe(), "p50 3.0 p99 5.0 max 5.0 ms (5)");
    }

    const T0: u64 = 1_700_000_000_000_000_000;
    const MS: u64 = 1_000_000;

    fn exec(pid: u32, killed: bool) -> Event {
        Event::new(
            T0,
            EventBody::Exec(ProcessExec {
                key: ProcessKey(pid, 1),
                cgroup_id: 9,
                pid,
                ns_pid: pid,
                parent: None,
                exe: "/tmp/x".into(),
                comm: "x".into(),
                argv: vec!["x".into()],
                argv_truncated: false,
                uid: 1000,
                euid: 1000,
                gid: 100,
                user: None,
                euser: None,
                exe_status: Default::default(),
                killed,
            }),
        )
    }

    fn exit(pid: u32, at: u64) -> Event {
        Event::new(
            at,
            EventBody::Exit(ProcessExit {
                key: ProcessKey(pid, 1),
                cgroup_id: 9,
                pid,
                code: None,
                signal: Some(9),
            }),
        )
    }

    fn finding(pid: u32, new: bool, kill: bool) -> Finding {
        use guardlab_engine::deviation::{ActionKind, Decision, Target};
        let decisions = if kill {
            vec![Decision {
                action: ActionKind::AgentKillProcess,
                initiated: true,
                message: "kill".into(),
                policy_uid: "p".into(),
                policy_name: "p".into(),
                deviation_uid: format!("dev:{pid}"),
                target: Target {
                    cgroup_id: 9,
                    container_id: "c".into(),
                    namespace: "n".into(),
                    pod: "pod".into(),
                    pid,
                    process: ProcessKey(pid, 1),
                    name: "x".into(),
                },
                timestamp: 0.0,
            }]
        } else {
            Vec::new()
        };
        Finding {
            policy_uid: "p".into(),
            policy_name: "p".into(),
            deviation_uid: format!("dev:{pid}"),
            checksum: "c".into(),
            kind: DeviationType::Process,
            new,
            reason: None,
            process: ProcessKey(pid, 1),
            cgroup_id: 9,
            timestamp: 0.0,
            flags: Vec::new(),
            decisions,
            prevented: false,
        }
    }

    #[test]
    fn a_live_run_keeps_each_figure_and_a_kill_waits_for_its_exit() {
        let mut rec = LatencyRecorder::new(LatencyClock::Live);
        let e = rec
            .finding(
                &exec(10, false),
                &finding(10, true, false),
                Some(T0 + 2 * MS),
            )
            .unwrap();
        rec.flagged(e, Some(T0 + 3 * MS));
        rec.flagged(e, Some(T0 + 30 * MS)); // the first flag time stays
        // The same deviation again, with nothing done: not kept.
        assert_eq!(
            rec.finding(&exec(11, false), &finding(11, false, false), Some(T0)),
            None
        );
        // Killed at exec by the kernel: waits for its exit.
        let k = rec
            .finding(&exec(12, true), &finding(12, true, false), Some(T0 + MS))
            .unwrap();
        // A kill decided in user space: carried out, then the exit.
        let u = rec
            .finding(&exec(13, false), &finding(13, false, true), Some(T0 + MS))
            .unwrap();
        rec.killed(u, Some(T0 + 4 * MS));
        rec.event(&exit(99, T0 + 4 * MS)); // another process
        rec.event(&exit(12, T0 + 5 * MS));
        rec.event(&exit(13, T0 + 6 * MS));
        let report = rec.report();
        assert_eq!(report.deviations.len(), 3);
        assert_eq!(report.deviations[u.0].kill_ms, Some(4.0));
        assert_eq!(report.deviations[u.0].gone_ms, Some(6.0));
        assert_eq!(report.deviations[e.0].decided_ms, Some(2.0));
        assert_eq!(report.deviations[e.0].flag_ms, Some(3.0));
        assert_eq!(report.deviations[e.0].gone_ms, None);
        assert_eq!(report.deviations[k.0].gone_ms, Some(5.0));
        assert!(report.deviations[k.0].killed_at_exec);
        assert_eq!(report.to_flag.map(|s| s.count), Some(1));
        assert_eq!(report.to_gone.map(|s| (s.count, s.max_ms)), Some((2, 6.0)));
        assert_eq!(report.to_kill.map(|s| s.count), Some(1));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["clock"], "live");
        assert_eq!(json["to_decision"]["p50_ms"], 1.0);
        assert_eq!(json["deviations"][0]["type"], "process");
        assert_eq!(json["deviations"][0]["flag_ms"], 3.0);
        assert_eq!(json["deviations"][1]["killed_at_exec"], true);
        // Absent figures are absent, not zero.
        assert!(json["deviations"][0].get("kill_ms").is_none());
        assert_eq!(json["deviations"][2]["kill_ms"], 4.0);
        assert!(json["deviations"][0].get("killed_at_exec").is_none());
        let lines = report.describe();
        assert_eq!(
            lines[0],
            "Latency, from the kernel's event (3 deviations acted on):"
        );
        assert!(lines.iter().any(|l| l.contains("flag raised")), "{lines:?}");
    }

    #[test]
    fn a_replay_measures_only_the_recordings_kernel_times() {
        let mut rec = LatencyRecorder::new(LatencyClock::Recording);
        let k = rec
            .finding(&exec(12, true), &finding(12, true, false), None)
            .unwrap();
        rec.flagged(k, None);
        rec.event(&exit(12, T0 + 7 * MS));
        let report = rec.report();
        assert_eq!(report.to_decision, None);
        assert_eq!(report.to_flag, None);
        assert_eq!(report.to_gone.map(|s| s.p50_ms), Some(7.0));
        let lines = report.describe();
        assert!(lines[0].contains("a replay has no clock"), "{lines:?}");
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(serde_json::to_value(&report).unwrap()["clock"], "recording");
        // No deviation acted on: nothing to say.
        assert!(
            LatencyRecorder::new(LatencyClock::Live)
                .report()
                .describe()
                .is_empty()
        );
    }

    #[test]
    fn past_the_bound_occurrences_are_counted_not_kept() {
        let mut rec = LatencyRecorder::new(LatencyClock::Live);
        for pid in 0..(MAX_ENTRIES as u32 + 3) {
            rec.finding(&exec(pid, false), &finding(pid, true, false), Some(T0));
        }
        let report = rec.report();
        assert_eq!(report.deviations.len(), MAX_ENTRIES);
        assert_eq!(report.omitted, 3);
        assert!(report.describe()[0].contains("3 more not kept"));
    }
}
