//! A command under a pseudo-terminal (the `tty` step): some programs print only when their
//! output is a terminal (`ipsec auto --add` answers on a tty, `ls` lays out columns). The
//! command gets a fresh pty (80x24) as stdin, stdout, stderr and controlling terminal, in its
//! own session; what the terminal shows is read from the master side, with the line
//! discipline's CRLF turned back into LF.
//!
//! The pty comes from nix's `openpty` (a feature of the nix we already use; no other crate),
//! the process from the same `process::NodeCmd` every node command uses (namespaces,
//! mounts), so a `tty` step differs from `show` only in its stdio.

use crate::process::{kill_group, wait_deadline, NodeCmd, Output, Stdio3};
use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{openpty, Winsize};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Instant;

/// Runs `cmd` under a new pseudo-terminal; killed (with its process group) at its timeout.
/// The output is what the terminal showed.
pub(crate) fn run_tty(cmd: &NodeCmd) -> Result<Output> {
    let pty = openpty(&Winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 }, None).context("openpty")?;
    let slave = File::from(pty.slave);
    let master = File::from(pty.master);
    let stdio = || -> Result<Stdio> { Ok(Stdio::from(slave.try_clone()?)) };
    let node = cmd;
    let mut cmd = node.command(Stdio3 { stdin: stdio()?, stdout: stdio()?, stderr: stdio()? })?;
    cmd.env("TERM", "vt100");
    // After process::command's setsid: the pty becomes the session's controlling terminal.
    unsafe {
        cmd.pre_exec(|| if libc::ioctl(0, libc::TIOCSCTTY, 0) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) });
    }
    let mut child = node.spawn(cmd)?;
    // Only the child (and what it starts) holds the slave now: when they are gone, reads end.
    drop(slave);
    let (stop_r, stop_w) = std::io::pipe().context("pipe")?;
    let reader = std::thread::spawn(move || read_terminal(master, stop_r));
    let status = wait_deadline(&mut child, Instant::now() + node.timeout)?;
    let timed_out = status.is_none();
    if timed_out {
        kill_group(child.id(), libc::SIGKILL);
    }
    let status = match status {
        Some(s) => Some(s),
        None => child.wait().ok(),
    };
    kill_group(child.id(), libc::SIGKILL);
    drop(stop_w); // the reader takes what is left in the terminal and ends
    let raw = reader.join().unwrap_or_default();
    Ok(Output { status, text: terminal_text(&String::from_utf8_lossy(&raw)), timed_out })
}

/// Reads the master side until every holder of the slave is gone (EIO) or `stop` is closed;
/// then takes what the terminal still holds.
fn read_terminal(mut master: File, stop: std::io::PipeReader) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN), PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            break;
        }
        let stopping = fds[1].any().unwrap_or(true);
        if fds[0].any().unwrap_or(false) {
            match master.read(&mut buf) {
                Ok(n) if n > 0 => {
                    out.extend_from_slice(&buf[..n]);
                    continue;
                }
                _ => break, // EIO: no process holds the terminal any more
            }
        }
        if stopping {
            // Whatever is still buffered: poll without waiting.
            loop {
                let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::ZERO) {
                    Ok(n) if n > 0 => match master.read(&mut buf) {
                        Ok(n) if n > 0 => out.extend_from_slice(&buf[..n]),
                        _ => break,
                    },
                    _ => break,
                }
            }
            break;
        }
    }
    out
}

/// What the terminal shows: CRLF as LF, and of a line rewritten with CR only its last version.
pub fn terminal_text(raw: &str) -> String {
    raw.replace("\r\n", "\n")
        .split('\n')
        .map(|l| {
            let l = l.trim_end_matches('\r');
            l.rsplit('\r').next().unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::terminal_text;

    #[test]
    fn crlf_becomes_lf_and_a_rewritten_line_shows_its_last_version() {
        assert_eq!(terminal_text("a\r\nb\r\n"), "a\nb\n");
        assert_eq!(terminal_text("10%\r50%\r100%\r\ndone\r\n"), "100%\ndone\n");
        assert_eq!(terminal_text("no newline"), "no newline");
    }
}
