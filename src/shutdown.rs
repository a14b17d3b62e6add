//! Ctrl-C and SIGTERM: the first stops dispatching and cancels transfers
//! (their partial files are kept for resume, the report and summary are
//! still written); a second one exits at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    /// 128 + the signal number, as shells report it (docs/contract.md, "Exit status").
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

/// A cloneable view of whether the run has been told to stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Option<Signal>>,
}

impl Shutdown {
    /// Install the signal handlers. Must run inside the tokio runtime.
    pub fn install() -> std::io::Result<Shutdown> {
        let (tx, rx) = watch::channel(None);
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            loop {
                let got = tokio::select! {
                    _ = interrupt.recv() => Signal::Interrupt,
                    _ = terminate.recv() => Signal::Terminate,
                };
                if tx.borrow().is_some() {
                    // The second signal: the user does not want to wait.
                    std::process::exit(i32::from(got.exit_code()));
                }
                eprintln!("\nfetch: interrupted; keeping partial files for resume (again to quit at once)");
                let _ = tx.send(Some(got));
            }
        });
        Ok(Shutdown { rx })
    }

    pub fn signal(&self) -> Option<Signal> {
        *self.rx.borrow()
    }

    /// Run `work` unless a signal arrives first (or has already).
    pub async fn unless_cancelled<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            () = self.cancelled() => None,
            out = work => Some(out),
        }
    }

    /// Resolves once a signal has arrived.
    pub async fn cancelled(&self) {
        let mut rx = self.rx.clone();
        // An error means the sender is gone: no signal can come any more.
        if rx.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
