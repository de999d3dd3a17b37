//! The notebook as a live run uses it: cells in a kernel and commands in terminals, driven
//! through Jupyter's own APIs (`guardlab-jupyter`) as a learner's browser would.

use std::time::Duration;

use guardlab_jupyter::{JupyterClient, JupyterError, Kernel, Terminal};

use super::backend::{CheckFailure, StepError};
use super::file::TerminalCommand;

/// What a live run needs from the notebook: cells and terminals, through Jupyter's APIs.
#[allow(async_fn_in_trait)] // Used through generics only.
pub trait Workbench {
    /// Run a cell in the notebook's kernel (started on first use); returns its output.
    async fn run_cell(&mut self, code: &str, timeout: Duration) -> Result<String, StepError>;
    /// Type a command line into the terminal of a session (opened on first use). A foreground
    /// command is waited for (the shell's prompt); a background one is left running.
    async fn terminal_command(
        &mut self,
        session: &str,
        command: &TerminalCommand,
    ) -> Result<String, StepError>;
    /// End what still runs in the terminals, close them and the kernel.
    async fn close(&mut self);
}

/// How long a background command gets to show its first output before it is left running.
const BACKGROUND_GRACE: Duration = Duration::from_millis(500);

/// The Jupyter driver (`guardlab-jupyter`) as the scenario's [`Workbench`].
pub struct JupyterWorkbench {
    client: JupyterClient,
    kernel: Option<Kernel>,
    /// Open terminals by session name, and whether a background command still runs there.
    terminals: Vec<(String, Terminal, bool)>,
}

fn driver(what: &'static str) -> impl Fn(JupyterError) -> StepError {
    move |source| StepError::Driver { what, source }
}

impl JupyterWorkbench {
    pub async fn connect(url: &str) -> Result<Self, StepError> {
        let client = JupyterClient::new(url).map_err(driver("the notebook"))?;
        client
            .wait_until_up(Duration::from_secs(60))
            .await
            .map_err(driver("the notebook"))?;
        Ok(JupyterWorkbench {
            client,
            kernel: None,
            terminals: Vec::new(),
        })
    }
}

impl Workbench for JupyterWorkbench {
    async fn run_cell(&mut self, code: &str, timeout: Duration) -> Result<String, StepError> {
        if self.kernel.is_none() {
            self.kernel = Some(
                self.client
                    .start_kernel()
                    .await
                    .map_err(driver("starting a kernel"))?,
            );
        }
        let kernel = self.kernel.as_mut().expect("started above");
        let cell = kernel
            .run_cell(code, timeout)
            .await
            .map_err(driver("running the cell"))?;
        let mut output = cell.stdout.clone();
        output.push_str(&cell.stderr);
        if let Some(e) = &cell.error {
            return Err(CheckFailure::CellFailed {
                ename: e.ename.clone(),
                evalue: e.evalue.clone(),
            }
            .into());
        }
        if cell.status != "ok" {
            return Err(CheckFailure::CellStatus {
                status: cell.status.clone(),
            }
            .into());
        }
        Ok(output)
    }

    async fn terminal_command(
        &mut self,
        session: &str,
        command: &TerminalCommand,
    ) -> Result<String, StepError> {
        let index = match self
            .terminals
            .iter()
            .position(|(name, _, _)| name == session)
        {
            Some(i) => i,
            None => {
                let t = self
                    .client
                    .open_terminal()
                    .await
                    .map_err(driver("opening a terminal"))?;
                self.terminals.push((session.to_string(), t, false));
                self.terminals.len() - 1
            }
        };
        let (_, terminal, busy) = &mut self.terminals[index];
        if *busy {
            // The background command of an earlier line still runs: end it first, as a person
            // would with Ctrl-C.
            terminal
                .interrupt(Duration::from_secs(10))
                .await
                .map_err(driver("Ctrl-C in the terminal"))?;
            *busy = false;
        }
        let answers: Vec<(&str, &str)> = command
            .answers
            .iter()
            .map(|a| (a.prompt.as_str(), a.reply.as_str()))
            .collect();
        let limit = if command.background {
            BACKGROUND_GRACE
        } else {
            command.timeout.0
        };
        match terminal.run_answering(&command.run, &answers, limit).await {
            Ok(result) => {
                let mut out = result.output;
                if result.exit_status != 0 {
                    out.push_str(&format!("\n(exit status {})", result.exit_status));
                }
                Ok(out)
            }
            Err(JupyterError::Timeout { partial, .. }) if command.background => {
                *busy = true;
                Ok(partial)
            }
            Err(source @ JupyterError::Timeout { .. }) => Err(CheckFailure::Unfinished {
                run: command.run.clone(),
                source,
            }
            .into()),
            Err(e) => Err(driver("the terminal")(e)),
        }
    }

    async fn close(&mut self) {
        for (_, mut terminal, busy) in self.terminals.drain(..) {
            if busy {
                let _ = terminal.interrupt(Duration::from_secs(5)).await;
            }
            let _ = terminal.close().await;
        }
        if let Some(kernel) = self.kernel.take() {
            let _ = kernel.close().await;
        }
    }
}
