//! Writing results to standard output.

use std::io::{self, Write};

/// Writes `text` to standard output. A closed pipe (`rampart ... | head`) is not an error: the reader has
/// what it wanted, so the rest is dropped quietly instead of panicking as `println!` would.
pub fn print(text: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
