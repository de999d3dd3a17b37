//! What guardlab writes for a person, in one voice:
//!
//! - [`Console`]: a scenario's steps and their detail lines, on standard output (silent in
//!   tests and JSON-only runs);
//! - [`ConsoleProgress`]: the lab's long phases (debootstrap, pip, apt-get, the lab's start).
//!   A phase may print hundreds of detail lines; a person needs to see that it moves, not read
//!   them. On a terminal each phase is one line that updates (the phase, how many detail lines
//!   so far, the seconds since it started, and the last detail line, cut to the terminal's
//!   width); in a log (CI, a pipe) the phase line and at most one detail line every
//!   [`render::LOG_DETAIL_EVERY`]. When a command fails, [`failure`] shows the last detail
//!   lines of the phase that was running that were not shown and that the error does not
//!   already quote. The decisions are [`render::Renderer`]'s (pure, tested); `live_line`
//!   carries them out on the process's one live line;
//! - [`warning`] and [`note`]: `warning: ...` and `note: ...` on standard error, beside a
//!   command's output (a stream that was out of order, what a time window left out);
//! - [`seconds`] and [`textwrap`]: how durations and long texts are shown.
//!
//! Error lines (`guardlab: ...`) and exit codes are not said here: they are
//! [`crate::report`]'s alone.

mod live_line;
pub mod render;

use std::time::Duration;

/// What [`Console::output`] shows of `text`: each line behind `| `, at most `max` of them, and
/// a marker with the count of the lines left out.
pub fn output_lines(text: &str, max: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut shown: Vec<String> = lines.iter().take(max).map(|l| format!("| {l}")).collect();
    if lines.len() > max {
        let left = lines.len() - max;
        shown.push(format!(
            "| … ({left} more line{} not shown)",
            if left == 1 { "" } else { "s" }
        ));
    }
    shown
}

/// Where a scenario's steps are written for a person: standard output, unless `quiet`.
#[derive(Clone, Copy, Debug)]
pub struct Console {
    pub quiet: bool,
}

impl Console {
    /// A line of its own (a step's heading, the summary).
    pub fn line(&self, text: impl AsRef<str>) {
        if !self.quiet {
            println!("{}", text.as_ref());
        }
    }

    /// A line of detail inside a step.
    pub fn detail(&self, text: impl AsRef<str>) {
        self.line(format!("       {}", text.as_ref()));
    }

    /// A command's output inside a step: its first `max` lines, then a marker that says how
    /// many were left out (the whole output is in the recording and the JSON report).
    pub fn output(&self, text: &str, max: usize) {
        for line in output_lines(text, max) {
            self.detail(line);
        }
    }

    /// The lab's progress as this console shows it (silent when the console is quiet).
    pub fn progress(&self) -> ConsoleProgress {
        ConsoleProgress { quiet: self.quiet }
    }
}

/// Lab progress on the console: on a terminal one updating line per phase, in a log the phase
/// lines and a detail line now and then (see the module documentation). `quiet` keeps it
/// silent (JSON-only runs, tests). Every value draws on the process's one live line; when one
/// goes away, its live line stays on the screen as it was.
pub struct ConsoleProgress {
    pub quiet: bool,
}

impl guardlab_lab_api::Progress for ConsoleProgress {
    fn phase(&self, what: &str) {
        if !self.quiet {
            live_line::phase(what);
        }
    }
    fn detail(&self, line: &str) {
        if !self.quiet {
            live_line::detail(line);
        }
    }
}

impl Drop for ConsoleProgress {
    fn drop(&mut self) {
        if !self.quiet {
            live_line::detach();
        }
    }
}

/// The command failed with `error`: show what of the running phase's output it does not carry
/// (before [`crate::report`] says the error).
pub fn failure(error: &str) {
    live_line::failure(error);
}

/// `warning: <text>`: something the user should know about the result (it may prove less than
/// it seems to).
pub fn warning_line(text: &str) -> String {
    format!("warning: {text}")
}

/// `note: <text>`: what guardlab did that the user did not spell out.
pub fn note_line(text: &str) -> String {
    format!("note: {text}")
}

/// Say a warning on standard error.
pub fn warning(text: &str) {
    eprintln!("{}", warning_line(text));
}

/// Say a note on standard error.
pub fn note(text: &str) {
    eprintln!("{}", note_line(text));
}

/// A duration as the step lines and the summary show it: `1.25s`.
pub fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Wrap text at `width` columns.
pub fn textwrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_and_notes_say_what_they_are() {
        assert_eq!(
            warning_line("the sensor lost 3 event(s)"),
            "warning: the sensor lost 3 event(s)"
        );
        assert_eq!(note_line("sorted"), "note: sorted");
    }

    #[test]
    fn long_output_is_cut_with_a_marker_that_counts_what_is_left_out() {
        assert_eq!(
            output_lines("a\nb\nc\nd\ne", 3),
            ["| a", "| b", "| c", "| … (2 more lines not shown)"]
        );
        assert_eq!(
            output_lines("a\nb\nc\nd", 3).last().unwrap(),
            "| … (1 more line not shown)"
        );
        assert_eq!(output_lines("a\nb", 3), ["| a", "| b"]);
        assert!(output_lines("", 3).is_empty());
    }

    #[test]
    fn long_texts_wrap_at_word_boundaries() {
        assert_eq!(
            textwrap("one two three four", 9),
            ["one two", "three", "four"]
        );
        assert_eq!(seconds(Duration::from_millis(1250)), "1.25s");
    }
}
