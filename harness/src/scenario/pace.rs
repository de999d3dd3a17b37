//! `--step`: a workshop's pace, one step per Enter.

use crate::console::Console;

/// Whether to run the next step, as a person in a workshop answers (`--step`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    Run,
    Stop,
}

/// Pauses before each step until a person says go on: a trainer walks a room through the
/// scenario one step at a time, and learners look at the notebook and the sensor's findings in
/// between. It reads lines without blocking the runtime, so the lab's events keep flowing
/// while it waits.
pub struct Pacer {
    input: Box<dyn tokio::io::AsyncBufRead + Unpin + Send>,
    /// The input ended: no further answer will come.
    closed: bool,
}

impl Pacer {
    /// Answers typed on standard input.
    pub fn stdin() -> Self {
        Self::from_reader(tokio::io::BufReader::new(tokio::io::stdin()))
    }

    pub fn from_reader(input: impl tokio::io::AsyncBufRead + Unpin + Send + 'static) -> Self {
        Pacer {
            input: Box::new(input),
            closed: false,
        }
    }

    /// The input ended earlier.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// One answer, without a prompt: `None` when the input is closed (workshop mode, where the
    /// console may answer instead).
    pub async fn wait_line(&mut self) -> Option<Pace> {
        use tokio::io::AsyncBufReadExt;
        if self.closed {
            return None;
        }
        let mut line = String::new();
        match self.input.read_line(&mut line).await {
            Ok(0) | Err(_) => {
                self.closed = true;
                None
            }
            Ok(_) if matches!(line.trim(), "q" | "quit" | "stop") => Some(Pace::Stop),
            Ok(_) => Some(Pace::Run),
        }
    }

    /// Enter runs the step; `q` (or the end of input) stops the run here.
    pub async fn ask(&mut self, out: &Console) -> Pace {
        out.line("       Press Enter to run this step (q and Enter to stop here).");
        self.wait_line().await.unwrap_or(Pace::Stop)
    }
}
