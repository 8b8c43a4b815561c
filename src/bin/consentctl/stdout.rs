//! Standard output, telling its reader going away (`| head -1`: nothing is
//! wrong, the command ends quietly) from any other broken pipe (a closed
//! connection to consentd is an error like any other).

use std::io::{self, Write};

/// Our own stdout was closed by its reader.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct Closed;

/// Stdout, whose broken pipe is marked as [`Closed`].
pub struct Stdout;

fn mark(e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::BrokenPipe => io::Error::new(io::ErrorKind::BrokenPipe, Closed),
        _ => e,
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stdout().lock().write(buf).map_err(mark)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        io::stdout().lock().write_all(buf).map_err(mark)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().lock().flush().map_err(mark)
    }
}

/// Whether `e` is (or was caused by) stdout's reader going away.
pub fn closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<Closed>()
            || c.downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<Closed>())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_stdout_counts_as_a_closed_pipe() {
        let ours = anyhow::Error::new(mark(io::Error::from(io::ErrorKind::BrokenPipe)));
        assert!(closed(&ours));
        let network = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("calling consentd");
        assert!(!closed(&network), "a broken connection is an error");
        assert!(!closed(&anyhow::Error::new(mark(io::Error::from(
            io::ErrorKind::PermissionDenied
        )))));
    }
}
