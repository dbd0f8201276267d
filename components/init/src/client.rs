//! The control utility side: connect to a running `fragnet run`, send one
//! request, print the reply.

use crate::rules::NftFileError;
use crate::script;
use fragnet_host::Control;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketType};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(15);

/// Finds the control socket: `--socket`, else the one named by `--script`,
/// else `$FRAGNET_SOCKET`, else the only socket in /run/fragnet.
fn socket_path(socket: &Option<PathBuf>, script: &Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(s) = socket {
        return Ok(s.clone());
    }
    if let Some(path) = script {
        let src = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read run script {}: {e}", path.display()))?;
        let root = fragnet_host::ConfigNode::parse(&src)
            .map_err(|e| format!("{}:{}:{}: {}", path.display(), e.line, e.col, e.message))?;
        return Ok(match root.attr("control") {
            Some(c) if !c.trim().is_empty() => {
                let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
                let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| ".".into());
                std::fs::canonicalize(&dir).unwrap_or(dir).join(c.trim())
            }
            _ => script::default_control_path(path),
        });
    }
    if let Some(s) = std::env::var_os("FRAGNET_SOCKET") {
        return Ok(PathBuf::from(s));
    }
    let dir = Path::new(script::DEFAULT_CONTROL_DIR);
    let socks: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match socks.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "no running fragnet found in {} (use --socket PATH or --script SCRIPT)",
            dir.display()
        )),
        many => Err(format!(
            "several fragnet instances are running ({}): choose one with --socket or --script",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Sends one request; returns (ok, body).
pub fn request(path: &Path, text: &str) -> Result<(bool, String), String> {
    let fd = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None)
        .map_err(|e| format!("socket: {e}"))?;
    let addr = SocketAddrUnix::new(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rustix::net::connect(&fd, &addr).map_err(|e| match e {
        rustix::io::Errno::NOENT | rustix::io::Errno::CONNREFUSED => format!(
            "no fragnet is running with control socket {} ({e})",
            path.display()
        ),
        rustix::io::Errno::ACCESS => format!("permission denied connecting to {}", path.display()),
        e => format!("connecting to {}: {e}", path.display()),
    })?;
    let mut ctl = Control::from_fd(fd);
    ctl.make_room();
    // A refusal may come before the request is read; a failed send then
    // still leaves the refusal to read, so look for it briefly before
    // reporting the failed send.
    let sent = ctl.send(text);
    let wait = if sent.is_ok() {
        TIMEOUT
    } else {
        Duration::from_secs(1)
    };
    match ctl.recv_timeout(wait) {
        Ok(Some(m)) => Ok((m.is_ok(), m.body)),
        Ok(None) => Err(match sent {
            Err(e) => format!("sending the request failed: {e}"),
            Ok(()) => "fragnet closed the connection without a reply".into(),
        }),
        Err(e) => Err(match sent {
            Err(send) => format!("sending the request failed: {send}"),
            Ok(()) => format!("waiting for a reply: {e}"),
        }),
    }
}

fn print_reply(result: Result<(bool, String), String>) -> ExitCode {
    match result {
        Ok((true, body)) => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let mut written = out.write_all(body.as_bytes());
            if written.is_ok() && !body.is_empty() && !body.ends_with('\n') {
                written = out.write_all(b"\n");
            }
            match written.and_then(|()| out.flush()) {
                // A reader that stopped early (`fragnet stats … | head`) is
                // not an error of ours.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("fragnet: writing the reply: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Ok((false, body)) => {
            eprintln!("fragnet: {}", body.trim_end());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fragnet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `fragnet ps`, `fragnet stats NAME`.
pub fn simple(socket: &Option<PathBuf>, script: &Option<PathBuf>, text: &str) -> ExitCode {
    match socket_path(socket, script) {
        Ok(p) => print_reply(request(&p, text)),
        Err(e) => print_reply(Err(e)),
    }
}

/// `fragnet nft --target NAME (-f FILE | ARGS…)`.
pub fn nft(
    socket: &Option<PathBuf>,
    script: &Option<PathBuf>,
    target: &str,
    file: Option<&Path>,
    args: &[String],
) -> ExitCode {
    let path = match socket_path(socket, script) {
        Ok(p) => p,
        Err(e) => return print_reply(Err(e)),
    };
    if let Some(f) = file {
        let text = if f == Path::new("-") {
            let mut s = String::new();
            match std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
                Ok(_) => s,
                Err(e) => return print_reply(Err(format!("reading stdin: {e}"))),
            }
        } else {
            match std::fs::read_to_string(f) {
                Ok(t) => t,
                Err(e) => return print_reply(Err(format!("cannot read {}: {e}", f.display()))),
            }
        };
        return match request(&path, &format!("nft {target} load\n{text}")) {
            Ok((false, body)) => {
                eprintln!("{}", NftFileError::new(f, &body));
                ExitCode::FAILURE
            }
            other => print_reply(other),
        };
    }
    if args.is_empty() {
        return print_reply(Err(
            "nothing to do: give -f FILE or a command such as `list ruleset`".into(),
        ));
    }
    if args.iter().any(|a| a.contains('\n')) {
        return print_reply(Err("nft command words may not contain newlines".into()));
    }
    print_reply(request(
        &path,
        &format!("nft {target} {}", join_words(args)),
    ))
}

/// Joins command words into one line, putting back the double quotes the
/// shell removed from words with blanks (nft strings such as comments).
fn join_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || (a.contains(char::is_whitespace) && !a.starts_with('"')) {
                format!("\"{a}\"")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_with_blanks_are_quoted_again() {
        let w: Vec<String> = ["add", "rule", "inet", "f", "input", "comment", "no ssh"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(join_words(&w), "add rule inet f input comment \"no ssh\"");
    }
}
