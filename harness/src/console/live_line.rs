//! The process's one live line on standard output: carries out the [`Renderer`]'s decisions
//! with an [`indicatif`] bar drawn on stdout. The line is never redrawn by a timer (whatever
//! the rest of guardlab prints between two phases would be written over), so its seconds move
//! when a line arrives.
#![allow(unsafe_code)] // the terminal's width (ioctl TIOCGWINSZ)

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

use super::render::{Mode, Output, Renderer};

/// The live line is redrawn at most this often; a change in between is drawn with the next
/// one, or when the line ends or is let go.
const REDRAW_EVERY: Duration = Duration::from_millis(50);

/// The process's live line: one renderer, at most one bar.
struct LiveLine {
    renderer: Renderer,
    bar: Option<ProgressBar>,
    /// When the live line was last drawn, and what it should show but does not yet.
    drawn_at: Option<Instant>,
    pending: Option<String>,
}

static LIVE_LINE: Mutex<Option<LiveLine>> = Mutex::new(None);

fn with_live_line<T>(work: impl FnOnce(&mut LiveLine) -> T) -> T {
    let mut guard = LIVE_LINE.lock().unwrap_or_else(|e| e.into_inner());
    let console = guard.get_or_insert_with(|| LiveLine {
        renderer: Renderer::new(if std::io::stdout().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Log
        }),
        bar: None,
        drawn_at: None,
        pending: None,
    });
    work(console)
}

/// The terminal's rows and columns (24 by 80 when they cannot be told).
fn terminal_size() -> (u16, u16) {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize we own; stdout may be anything, failure is handled.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (
        if rc == 0 && size.ws_row > 0 {
            size.ws_row
        } else {
            24
        },
        if rc == 0 && size.ws_col > 0 {
            size.ws_col
        } else {
            80
        },
    )
}

fn terminal_width() -> usize {
    usize::from(terminal_size().1)
}

/// Standard output as indicatif draws on it, with the width the live line is cut to (one
/// measure for both, so the line never wraps).
#[derive(Debug)]
struct Stdout;

impl Stdout {
    fn write(&self, text: &str) -> std::io::Result<()> {
        use std::io::Write;
        std::io::stdout().lock().write_all(text.as_bytes())
    }

    fn move_by(&self, n: usize, code: char) -> std::io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.write(&format!("\x1b[{n}{code}"))
    }
}

impl TermLike for Stdout {
    fn width(&self) -> u16 {
        terminal_size().1
    }
    fn height(&self) -> u16 {
        terminal_size().0
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.move_by(n, 'A')
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.move_by(n, 'B')
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.move_by(n, 'C')
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.move_by(n, 'D')
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write(&format!("{s}\n"))
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.write(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.write("\r\x1b[2K")
    }
    fn flush(&self) -> std::io::Result<()> {
        use std::io::Write;
        std::io::stdout().lock().flush()
    }
}

impl LiveLine {
    fn write(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Line(text) => match &self.bar {
                    // Above the live line, which stays below.
                    Some(bar) => bar.println(text),
                    None => println!("{text}"),
                },
                Output::Live(text) => {
                    let now = Instant::now();
                    if self
                        .drawn_at
                        .is_some_and(|t| now.duration_since(t) < REDRAW_EVERY)
                    {
                        self.pending = Some(text);
                    } else {
                        self.live_bar().set_message(text);
                        self.drawn_at = Some(now);
                        self.pending = None;
                    }
                }
                Output::EndLive(text) => {
                    if let Some(bar) = self.bar.take() {
                        bar.finish_with_message(text);
                    }
                    self.drawn_at = None;
                    self.pending = None;
                }
            }
        }
    }

    fn live_bar(&mut self) -> &ProgressBar {
        self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(
                None,
                ProgressDrawTarget::term_like(Box::new(Stdout)),
            );
            bar.set_style(
                ProgressStyle::with_template("{wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        })
    }

    /// Draws what the live line has yet to show (changes of the last moments, which came
    /// from the work that just ended), then lets go of it: it stays on the screen as it is,
    /// and nothing redraws it over what is printed next.
    fn detach(&mut self) {
        if let Some(bar) = self.bar.take() {
            if let Some(text) = self.pending.take() {
                bar.set_message(text);
            }
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        self.drawn_at = None;
        self.pending = None;
        self.renderer.detached();
    }
}

/// A phase starts.
pub(super) fn phase(text: &str) {
    with_live_line(|c| {
        let out = c.renderer.phase(text, Instant::now(), terminal_width());
        c.write(out);
    });
}

/// A detail line of the current phase.
pub(super) fn detail(line: &str) {
    with_live_line(|c| {
        let out = c.renderer.detail(line, Instant::now(), terminal_width());
        c.write(out);
    });
}

/// The code that showed progress is done with it: the live line stays as it is.
pub(super) fn detach() {
    with_live_line(LiveLine::detach);
}

/// The command failed with `error`: show what of the running phase's output it does not carry.
pub(super) fn failure(error: &str) {
    with_live_line(|c| {
        c.detach();
        let out = c.renderer.failure(error);
        c.write(out);
    });
}
