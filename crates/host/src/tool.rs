//! Running a host tool (`ip`, `nft`, `dnsmasq`, …) whose failure must show the exact argv
//! and its stderr: one runner for the tap set-up and the host networks.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot run {}", program.display())]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot {what}: `{argv}` exited with {status}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Command {
        what: String,
        argv: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Runs `program args` (with `stdin` piped in when given) and returns its stdout; `what`
/// names the step in the error.
pub fn run(
    program: &Path,
    what: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, ToolError> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let spawn_err = |source| ToolError::Spawn {
        program: program.to_path_buf(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(ToolError::Command {
        what: what.to_string(),
        argv: format!("{} {}", program.display(), args.join(" ")),
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}
