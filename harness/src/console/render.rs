//! The decisions of the progress display, without I/O: what each phase, detail line and
//! failure writes, on a terminal (one updating line per phase) or in a log (the phase, and a
//! detail line at most every [`LOG_DETAIL_EVERY`]). [`super::live_line`] carries them out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// In front of a phase.
pub const PHASE_PREFIX: &str = "       lab: ";
/// In front of a detail line.
pub const DETAIL_PREFIX: &str = "         ";
/// At most one detail line this often when the console is not a terminal.
pub const LOG_DETAIL_EVERY: Duration = Duration::from_secs(10);
/// Detail lines of a failed phase shown at the end.
pub const FAILURE_TAIL: usize = 20;
/// The room the live line keeps for the last detail line when the phase is long.
const DETAIL_ROOM: usize = 24;

/// Where progress goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A terminal: one updating line per phase.
    Terminal,
    /// A log: printed lines only.
    Log,
}

/// What to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A line that stays.
    Line(String),
    /// The live line shows this now.
    Live(String),
    /// The live line shows this and stays; the next live line goes below it.
    EndLive(String),
}

/// The phase that runs now.
#[derive(Debug)]
struct Phase {
    text: String,
    started: Instant,
    lines: u64,
    last: Option<String>,
    /// When a detail line was last printed (log mode).
    last_printed: Option<Instant>,
    /// The last detail lines, and whether each was printed.
    recent: VecDeque<(String, bool)>,
    /// Whether a live line of this phase is showing.
    live: bool,
}

/// The rendering decisions, without I/O: what each phase, detail and failure writes.
#[derive(Debug)]
pub struct Renderer {
    mode: Mode,
    phase: Option<Phase>,
}

impl Renderer {
    pub fn new(mode: Mode) -> Renderer {
        Renderer { mode, phase: None }
    }

    /// A new phase starts at `now`; `width` is the terminal's.
    pub fn phase(&mut self, text: &str, now: Instant, width: usize) -> Vec<Output> {
        let mut out = Vec::new();
        if let Some(old) = self.phase.take()
            && old.live
        {
            out.push(Output::EndLive(live_line(
                &old.text,
                old.lines,
                now.duration_since(old.started),
                None,
                width,
            )));
        }
        let text = one_line(text);
        match self.mode {
            Mode::Log => out.push(Output::Line(format!("{PHASE_PREFIX}{text}"))),
            Mode::Terminal => {
                // What does not fit in the live line is said in full first: a phase may be
                // what guardlab is about to change on the host.
                if phase_room(width) < text.chars().count() {
                    out.push(Output::Line(format!("{PHASE_PREFIX}{text}")));
                }
                out.push(Output::Live(live_line(
                    &text,
                    0,
                    Duration::ZERO,
                    None,
                    width,
                )));
            }
        }
        self.phase = Some(Phase {
            live: self.mode == Mode::Terminal,
            text,
            started: now,
            lines: 0,
            last: None,
            last_printed: None,
            recent: VecDeque::with_capacity(FAILURE_TAIL),
        });
        out
    }

    /// A detail line of the current phase arrives at `now`.
    pub fn detail(&mut self, line: &str, now: Instant, width: usize) -> Vec<Output> {
        let mode = self.mode;
        let phase = self.phase.get_or_insert_with(|| Phase {
            text: String::new(),
            started: now,
            lines: 0,
            last: None,
            last_printed: None,
            recent: VecDeque::with_capacity(FAILURE_TAIL),
            live: false,
        });
        let line = one_line(line);
        phase.lines += 1;
        let elapsed = now.duration_since(phase.started);
        let printed = match mode {
            Mode::Terminal => false,
            Mode::Log => phase
                .last_printed
                .is_none_or(|t| now.duration_since(t) >= LOG_DETAIL_EVERY),
        };
        if phase.recent.len() == FAILURE_TAIL {
            phase.recent.pop_front();
        }
        phase.recent.push_back((line.clone(), printed));
        let out = match mode {
            Mode::Terminal => {
                phase.live = true;
                vec![Output::Live(live_line(
                    &phase.text,
                    phase.lines,
                    elapsed,
                    Some(&line),
                    width,
                ))]
            }
            Mode::Log if printed => {
                phase.last_printed = Some(now);
                vec![Output::Line(format!(
                    "{DETAIL_PREFIX}{} {line}",
                    counters(phase.lines, elapsed)
                ))]
            }
            Mode::Log => Vec::new(),
        };
        phase.last = Some(line);
        out
    }

    /// The live line was left as it is (its owner went away): the next detail starts another.
    pub fn detached(&mut self) {
        if let Some(phase) = &mut self.phase {
            phase.live = false;
        }
    }

    /// The command failed with `error`: the current phase's last detail lines that were not
    /// shown and that the error does not quote (as a line of its own, the way tool errors
    /// quote their last output).
    pub fn failure(&mut self, error: &str) -> Vec<Output> {
        let Some(phase) = &self.phase else {
            return Vec::new();
        };
        let unseen: Vec<&str> = phase
            .recent
            .iter()
            .filter(|(line, printed)| {
                !printed && !error.lines().any(|quoted| quoted.trim() == line.trim())
            })
            .map(|(line, _)| line.as_str())
            .collect();
        if unseen.is_empty() {
            return Vec::new();
        }
        let mut out = vec![Output::Line(format!(
            "{PHASE_PREFIX}the last output of \"{}\":",
            phase.text
        ))];
        out.extend(
            unseen
                .into_iter()
                .map(|l| Output::Line(format!("{DETAIL_PREFIX}{l}"))),
        );
        out
    }
}

/// `[12 lines, 40 s]`; `[40 s]` before the first line.
fn counters(lines: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    match lines {
        0 => format!("[{secs} s]"),
        1 => format!("[1 line, {secs} s]"),
        n => format!("[{n} lines, {secs} s]"),
    }
}

/// How many characters of the phase the live line shows, leaving room for the counters and
/// some of the last detail line.
fn phase_room(width: usize) -> usize {
    width
        .saturating_sub(PHASE_PREFIX.len() + "[99999 lines, 9999 s]".len() + 2 + DETAIL_ROOM)
        .max(12)
}

/// The live line of a phase, at most `width` characters: prefix, phase (cut when it leaves too
/// little room), counters, and the last detail line as far as it fits. Without a detail line
/// and before the first second, just the phase.
pub fn live_line(
    phase: &str,
    lines: u64,
    elapsed: Duration,
    last: Option<&str>,
    width: usize,
) -> String {
    let mut line = format!("{PHASE_PREFIX}{}", cut(phase, phase_room(width)));
    if lines > 0 || elapsed.as_secs() > 0 {
        line.push(' ');
        line.push_str(&counters(lines, elapsed));
    }
    if let Some(last) = last {
        line.push(' ');
        line.push_str(last);
    }
    cut(&line, width.max(1))
}

/// `text` in at most `max` characters, ending with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A tool's line as one line of text: tabs and control characters (terminal escapes, carriage
/// returns) become spaces, trailing space goes.
fn one_line(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    clean.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(outputs: &[Output]) -> Vec<String> {
        outputs
            .iter()
            .map(|o| match o {
                Output::Line(t) => format!("line {t}"),
                Output::Live(t) => format!("live {t}"),
                Output::EndLive(t) => format!("end {t}"),
            })
            .collect()
    }

    #[test]
    fn a_terminal_shows_one_updating_line_per_phase() {
        let t0 = Instant::now();
        let mut r = Renderer::new(Mode::Terminal);
        assert_eq!(
            lines(&r.phase("debootstrap trixie", t0, 100)),
            ["live        lab: debootstrap trixie"]
        );
        let out = r.detail("I: Retrieving\tlibc6", t0 + Duration::from_secs(3), 100);
        assert_eq!(
            lines(&out),
            ["live        lab: debootstrap trixie [1 line, 3 s] I: Retrieving libc6"]
        );
        r.detail("I: Validating libc6", t0 + Duration::from_secs(4), 100);
        // The next phase leaves the old line as a summary, without its last detail.
        let out = r.phase(
            "creating the user jovyan",
            t0 + Duration::from_secs(70),
            100,
        );
        assert_eq!(
            lines(&out),
            [
                "end        lab: debootstrap trixie [2 lines, 70 s]",
                "live        lab: creating the user jovyan",
            ]
        );
    }

    #[test]
    fn the_live_line_is_cut_to_the_terminal_width() {
        let t0 = Instant::now();
        let mut r = Renderer::new(Mode::Terminal);
        r.phase("pip install", t0, 60);
        let long = "Collecting jupyterlab-server>=2.27.1 (from jupyterlab) something long";
        let out = r.detail(long, t0 + Duration::from_secs(12), 60);
        let [Output::Live(text)] = out.as_slice() else {
            panic!("{out:?}");
        };
        assert_eq!(text.chars().count(), 60, "{text}");
        assert!(
            text.starts_with("       lab: pip install [1 line, 12 s] Collecting")
                && text.ends_with('…'),
            "{text}"
        );
    }

    #[test]
    fn a_phase_too_long_for_the_live_line_is_said_in_full_first() {
        let t0 = Instant::now();
        let mut r = Renderer::new(Mode::Terminal);
        let said = "installing debootstrap iproute2 with apt-get (debootstrap builds the pod's \
                    root filesystem; ip makes the lab's network devices); --no-install refuses";
        let out = r.phase(said, t0, 80);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0], Output::Line(format!("{PHASE_PREFIX}{said}")));
        let Output::Live(live) = &out[1] else {
            panic!("{out:?}")
        };
        assert!(
            live.chars().count() <= 80 && live.contains("installing"),
            "{live}"
        );
        let out = r.detail("Setting up debootstrap", t0 + Duration::from_secs(5), 80);
        let [Output::Live(live)] = out.as_slice() else {
            panic!("{out:?}");
        };
        assert!(
            live.contains("[1 line, 5 s] Setting up") && live.chars().count() <= 80,
            "the counters and the detail still show: {live}"
        );
    }

    #[test]
    fn a_log_gets_the_phase_and_a_detail_line_at_most_every_ten_seconds() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut r = Renderer::new(Mode::Log);
        assert_eq!(
            lines(&r.phase("debootstrap trixie", t0, 80)),
            ["line        lab: debootstrap trixie"]
        );
        let mut printed = Vec::new();
        for (second, text) in [
            (1, "a"),
            (2, "b"),
            (9, "c"),
            (11, "d"),
            (12, "e"),
            (25, "f"),
        ] {
            printed.extend(lines(&r.detail(text, at(second), 80)));
        }
        assert_eq!(
            printed,
            [
                "line          [1 line, 1 s] a",
                "line          [4 lines, 11 s] d",
                "line          [6 lines, 25 s] f",
            ]
        );
        // A new phase starts its own pace.
        r.phase("pip", at(26), 80);
        assert_eq!(
            lines(&r.detail("x", at(27), 80)),
            ["line          [1 line, 1 s] x"]
        );
    }

    #[test]
    fn a_failure_shows_the_last_lines_that_neither_the_log_nor_the_error_showed() {
        let t0 = Instant::now();
        let mut r = Renderer::new(Mode::Log);
        r.phase("pip install", t0, 80);
        for i in 0..30 {
            r.detail(&format!("line {i}"), t0 + Duration::from_millis(i * 10), 80);
        }
        // line 0 was printed (and is out of the tail anyway); the error quotes line 29.
        let out = lines(&r.failure("pip install failed; its last output:\n  line 29"));
        assert_eq!(
            out[0],
            "line        lab: the last output of \"pip install\":"
        );
        let shown: Vec<&str> = out[1..]
            .iter()
            .map(|l| l.trim_start_matches("line "))
            .collect();
        let expected: Vec<String> = (10..29)
            .map(|i| format!("{DETAIL_PREFIX}line {i}"))
            .collect();
        assert_eq!(shown, expected);

        // Nothing to add when the error carries it all.
        let mut r = Renderer::new(Mode::Terminal);
        r.phase("apt-get", t0, 80);
        r.detail("E: Unable to fetch", t0, 80);
        let error =
            "`apt-get install x` failed (exit status: 100); its last lines:\n  E: Unable to fetch";
        assert!(r.failure(error).is_empty());
        assert!(Renderer::new(Mode::Log).failure("no phase ran").is_empty());
    }
}
