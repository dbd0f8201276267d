//! fragnet: the `init` of a fragnet system, and its control utility.
//!
//! * `fragnet run SCRIPT.xml` reads a Genode-flavoured run script, checks
//!   it completely, creates TAP devices and every channel (memfd + eventfds),
//!   starts each component as its own process pinned to its CPU with only
//!   the descriptors its routes name, restarts components that die (handing
//!   their peers fresh channels), applies changed rule files, and serves a
//!   control socket that only allowed uids may use.
//! * `fragnet check SCRIPT.xml` only validates.
//! * `fragnet nft`, `fragnet stats`, `fragnet ps` talk to a running
//!   `fragnet run` through its control socket.
//!
//! The run-script schema and the control protocol are in this crate's
//! README; the contracts with components are in `docs/INTERNALS.md`.

mod client;
mod rules;
mod script;
mod spawn;
mod supervisor;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "fragnet", version, about = "fragnet init and control utility")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Target {
    /// Control socket of the running fragnet.
    #[arg(long, conflicts_with = "script")]
    socket: Option<PathBuf>,
    /// Run script of the running fragnet (its control socket is used).
    #[arg(long)]
    script: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the components of a run script and supervise them.
    Run { script: PathBuf },
    /// Validate a run script without starting anything.
    Check {
        script: PathBuf,
        /// Also print the processes and channels it would create.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Manage the nft ruleset of a component (stack or switch).
    Nft {
        #[command(flatten)]
        at: Target,
        /// The component (start name, or instance name like nic_drv#1).
        #[arg(long)]
        target: String,
        /// Load this ruleset file (replaces the component's whole ruleset).
        #[arg(short = 'f', long = "file", conflicts_with = "args")]
        file: Option<PathBuf>,
        /// nft command: `list ruleset`, `list counters`, `flush ruleset`,
        /// `add rule …`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Show a component's counters.
    Stats {
        #[command(flatten)]
        at: Target,
        name: String,
    },
    /// List the components, their pids, states and restarts.
    Ps {
        #[command(flatten)]
        at: Target,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    fragnet_host::log::init("fragnet");
    match cli.cmd {
        Cmd::Check { script, verbose } => {
            let checks = script::Checks::for_this_process();
            match script::Script::load(&script, &checks) {
                Ok(s) => {
                    let plan = script::Plan::new(&s);
                    if verbose {
                        print!("{}", plan.describe(&s));
                    }
                    println!(
                        "{}: ok ({} processes, {} channels)",
                        script.display(),
                        plan.instances.len(),
                        plan.links.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Run { script } => match supervisor::Supervisor::start(&script) {
            Ok(sup) => ExitCode::from(sup.run() as u8),
            Err(e) => {
                eprintln!("{e}");
                eprintln!("fragnet: not started (nothing is left running or created)");
                ExitCode::from(2)
            }
        },
        Cmd::Nft {
            at,
            target,
            file,
            args,
        } => client::nft(&at.socket, &at.script, &target, file.as_deref(), &args),
        Cmd::Stats { at, name } => client::simple(&at.socket, &at.script, &format!("stats {name}")),
        Cmd::Ps { at } => client::simple(&at.socket, &at.script, "list"),
    }
}
