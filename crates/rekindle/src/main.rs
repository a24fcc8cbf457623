//! The rekindle worker and its tools.

/// See the workspace manifest: faster than the system allocator for the profile cache's
/// churn of small allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod claims;
mod dead_letter;
mod generate;
mod inspect;
mod observe;
mod replay;
mod report;
mod restore;
mod run;
mod security;
mod settings;
mod tail;
mod wiring;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rekindle",
    version,
    about = "Streaming lapse detection: Kafka activity in, reactivation triggers out."
)]
struct Cli {
    /// TOML configuration layered over the built-in defaults (see defaults.toml).
    #[arg(long, global = true, env = "REKINDLE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker: consume activity, keep state, emit triggers.
    Run,
    /// Run the same engine over a JSON-lines file, with no broker; prints triggers as JSON
    /// (--audit: and the decisions that sent nothing; --rules, --compare: try rule changes).
    Replay(replay::ReplayArgs),
    /// Generate synthetic activity to a topic or a file.
    Gen(generate::GenArgs),
    /// Print records of the trigger topic as JSON lines.
    Tail(tail::TailArgs),
    /// Print one user's state, stage, pending timers and recent decisions from a state
    /// directory (read-only; safe beside a running worker).
    Inspect(inspect::InspectArgs),
    /// Print growth figures (active users, retention cohorts, segments, experiment lift)
    /// from a state directory, or from the engine run over a replay file with --input;
    /// --format json for machines.
    Report(report::ReportArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = (|| -> anyhow::Result<()> {
        let settings = settings::Settings::load(cli.config.as_deref())?;
        wiring::init_logging(&settings)?;
        match cli.command {
            Command::Run => {
                let runtime = wiring::runtime()?;
                let result = runtime.block_on(run::run(settings));
                // A pipeline thread that did not finish within the grace period after
                // another failed is not waited for.
                runtime.shutdown_background();
                result
            }
            Command::Replay(args) => replay::replay(&settings, &args),
            Command::Gen(args) => generate::generate(&settings, &args),
            Command::Tail(args) => wiring::runtime()?.block_on(tail::tail(&settings, &args)),
            Command::Inspect(args) => inspect::inspect(&settings, &args),
            Command::Report(args) => report::report(&settings, &args),
        }
    })();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rekindle: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
