//! `retake status … | head`: a reader that goes away must end the command quietly.
//!
//! Rust ignores SIGPIPE in every program, so a write to a closed pipe returns an error and
//! `println!` panics on it. Command-line tools (`cat`, `grep`) take the default instead: the
//! kernel ends the process quietly. The commands that print do the same; `retake worker` and
//! `retake api` keep Rust's choice, since they write only to sockets and logs and must never die
//! of a closed connection (their socket writes use `MSG_NOSIGNAL` anyway, as std and tokio do on
//! Linux, so the CLI's own gRPC and database connections are unaffected by this).

/// Let SIGPIPE end the process, as a Unix filter does.
#[cfg(unix)]
#[expect(
    unsafe_code,
    reason = "signal(2) is a C function; restoring a default disposition"
)]
pub fn die_quietly_on_closed_pipe() {
    // SAFETY: called at the start of `main`, before any thread exists; `SIG_DFL` installs no
    // handler, so there is no handler code whose safety to argue.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// No SIGPIPE off Unix: nothing to do.
#[cfg(not(unix))]
pub fn die_quietly_on_closed_pipe() {}
