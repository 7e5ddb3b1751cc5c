//! Command-line arguments (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Chronicle: a durable workflow engine on an event-sourced, hash-chained log.
#[derive(Debug, Parser)]
#[command(name = "chronicle", version, about, long_about = None)]
pub struct Cli {
    /// The database: a redb file (its commit journal is PATH-journal,
    /// beside it), or a PostgreSQL URL (postgres://USER@HOST/DB) shared by
    /// many processes and `chronicle worker`s (README: "Scaling out").
    #[arg(
        long,
        global = true,
        env = "CHRONICLE_DB",
        default_value = "chronicle.redb"
    )]
    pub db: PathBuf,
    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less output: only errors and the final summary.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log lines (stderr) as text, or as one JSON object per line with
    /// the `run_id`/`step_id` of the run and attempt they belong to.
    #[arg(long, global = true, env = "CHRONICLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The format of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Input of a new run.
#[derive(Debug, Args)]
pub struct InputArgs {
    /// Run input as a JSON object.
    #[arg(long, conflicts_with = "input_file")]
    pub input: Option<String>,
    /// Run input from a JSON file.
    #[arg(long)]
    pub input_file: Option<PathBuf>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Validate a workflow, create a run and execute it to the end.
    Run {
        /// Workflow file (.yaml, .yml or .json).
        file: PathBuf,
        #[command(flatten)]
        input: InputArgs,
        /// Creating a run with a key already used returns that run.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// With a server holding the database: submit, print the run id
        /// and return at once (the server executes the run). On a shared
        /// database (postgres://): offer the run to the workers.
        #[arg(long)]
        detach: bool,
    },
    /// Serve the HTTP API: own the database, recover and execute runs,
    /// answer /v1 (see the README's "The server").
    Serve {
        /// Address to listen on (port 0 picks a free one). Anything but
        /// loopback is reachable from other machines: use TLS.
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: std::net::SocketAddr,
        /// At SIGINT/SIGTERM, how long running attempts may finish before
        /// they are killed and recorded (30s, 2m).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// Largest request body, bytes.
        #[arg(long, default_value_t = 8 << 20)]
        body_limit: usize,
        /// Event streams open at once; more are refused (503).
        #[arg(long, default_value_t = 256)]
        max_streams: usize,
        /// TLS certificate (PEM); with --tls-key, serve HTTPS.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The bearer token /metrics needs when listening beyond loopback
        /// (default: the API token). On loopback /metrics is open.
        #[arg(long, env = "CHRONICLE_METRICS_TOKEN")]
        metrics_token: Option<String>,
        /// On a shared database (--db postgres://…): serve the API only;
        /// runs it creates are executed by `chronicle worker`s.
        #[arg(long)]
        no_worker: bool,
        /// On a shared database: a run's lease; a worker that stops
        /// renewing it (killed, paused, cut off) loses the run to another
        /// after this long (10s, 30s).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        lease: std::time::Duration,
    },
    /// Execute runs from a shared database (--db postgres://…, or
    /// CHRONICLE_DB): claim runs no worker holds, execute them, take over
    /// the runs of workers that died. Any number, on any machines; see the
    /// README's "Scaling out".
    Worker {
        /// Most attempts running at once in this worker.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Most runs this worker holds at once (executing, or waiting for a
        /// retry, a timer, a signal): it claims no more beyond, and offers
        /// go to other workers.
        #[arg(long, default_value_t = 1024)]
        max_runs: usize,
        /// A run's lease; a worker that stops renewing it loses the run to
        /// another after this long (10s, 30s).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        lease: std::time::Duration,
        /// At SIGINT/SIGTERM, how long running attempts may finish before
        /// they are killed, recorded, and their runs left to other workers.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
    },
    /// Check a workflow definition.
    Validate {
        /// Workflow file.
        file: PathBuf,
    },
    /// Recover crashed runs: record attempts cut off by the stop, and
    /// finish every non-terminal run (or the named ones).
    Recover {
        /// Run ids or unique prefixes.
        runs: Vec<String>,
        /// Open a crashed database whose commit journal is missing or
        /// damaged with what can still be read: events only the lost part
        /// held are given up (recorded in the database, shown by verify).
        #[arg(long)]
        accept_loss: bool,
    },
    /// List runs.
    List {
        /// Only runs with this status.
        #[arg(long)]
        status: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show a run's state.
    Status {
        /// Run id or unique prefix.
        run: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show a run's events.
    History {
        /// Run id or unique prefix.
        run: String,
        /// JSON Lines output (one envelope per line).
        #[arg(long)]
        json: bool,
        /// Keep going: continue a non-terminal run in this process and
        /// print its events as they are committed.
        #[arg(long)]
        follow: bool,
    },
    /// Time travel: a run's state at any event or time.
    Replay {
        /// Run id or unique prefix (or use --file).
        run: Option<String>,
        /// An exported history (JSON Lines) instead of the database.
        #[arg(long, conflicts_with = "run")]
        file: Option<PathBuf>,
        /// State after this event.
        #[arg(long, conflicts_with = "at_time")]
        at: Option<u64>,
        /// State at this time (RFC 3339).
        #[arg(long)]
        at_time: Option<String>,
        /// Each event with what it changed.
        #[arg(long)]
        timeline: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Verify hash chains and fold determinism.
    Verify {
        /// One run (default: every stream).
        run: Option<String>,
        /// A head hash of RUN recorded earlier (verify --json prints
        /// head_hash): fail unless the history up to it is unchanged.
        #[arg(long, requires = "run")]
        expect_head: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Start a new run from a run's state at a seq, and execute it.
    Fork {
        /// Source run id or prefix.
        run: String,
        /// The seq to fork at.
        #[arg(long)]
        at: u64,
        /// A new run input (JSON object).
        #[arg(long)]
        input: Option<String>,
        /// Override a step's output: STEP=JSON (repeatable).
        #[arg(long = "set-output")]
        set_output: Vec<String>,
    },
    /// Compare two runs: definition, input, each step, and where their
    /// histories diverge (exit 0 when equivalent, 1 when they differ).
    Diff {
        /// The first run (id or prefix).
        a: String,
        /// The second run (id or prefix); often a fork of the first.
        b: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Would recorded runs have been decided the same under a new
    /// definition? (exit 0 when every run checked is compatible)
    UpgradeCheck {
        /// The new workflow file.
        file: PathBuf,
        /// Runs to check (ids or prefixes; default: every run of the
        /// workflow the file names).
        #[arg(long, num_args = 1.., conflicts_with = "workflow")]
        runs: Vec<String>,
        /// Every run of this workflow (default: the file's `name`).
        #[arg(long)]
        workflow: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Every agent: skills, circuit, load, the workflows that declare it.
    Agents {
        /// JSON output (with each agent's last transitions).
        #[arg(long)]
        json: bool,
    },
    /// Print a run's history as JSON Lines.
    Export {
        /// Run id or prefix.
        run: String,
    },
    /// Import an exported history (verified first).
    Import {
        /// The JSON Lines file.
        file: PathBuf,
    },
    /// Cancel a run (when no other process is executing it).
    Cancel {
        /// Run id or prefix.
        run: String,
    },
    /// Pause a run: no new attempts start.
    Pause {
        /// Run id or prefix.
        run: String,
    },
    /// Resume a paused run and execute it to the end.
    Resume {
        /// Run id or prefix.
        run: String,
    },
    /// Release a quarantined run and execute it to the end.
    Release {
        /// Run id or prefix.
        run: String,
    },
    /// Send a signal to a run: consumed by a `signal:` step of that name,
    /// now or when one waits (signals are buffered in order).
    Signal {
        /// Run id or prefix.
        run: String,
        /// The signal's name.
        name: String,
        /// Its data, JSON (the step's output; default null).
        #[arg(long)]
        data: Option<String>,
        /// An id: a repeat with the same id is recorded once (default: a
        /// new one).
        #[arg(long)]
        id: Option<String>,
    },
    /// Approve an `approval:` step (recorded with who and when).
    Approve {
        /// Run id or prefix.
        run: String,
        /// The approval step.
        step: String,
        /// Who approves (default: $USER); must be a listed approver.
        #[arg(long = "as", value_name = "WHO")]
        by: Option<String>,
        /// A comment (recorded).
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject an `approval:` step: the step fails.
    Reject {
        /// Run id or prefix.
        run: String,
        /// The approval step.
        step: String,
        /// Who rejects (default: $USER); must be a listed approver.
        #[arg(long = "as", value_name = "WHO")]
        by: Option<String>,
        /// A comment (recorded).
        #[arg(long)]
        comment: Option<String>,
    },
    /// Cron schedules: `serve` starts a run at each nominal time (once,
    /// across crashes and restarts).
    Schedule {
        /// What to do.
        #[command(subcommand)]
        cmd: ScheduleCmd,
    },
    /// Print the JSON Schema of the workflow format.
    Schema,
    /// Benchmarks (figures, not tests).
    Bench {
        /// Which benchmark.
        /// `steps` and `workers` measure on PostgreSQL with
        /// --db postgres://… (a fresh database per measurement on that
        /// server, dropped after); `workers` needs it.
        #[arg(value_parser = ["store", "steps", "replay", "scheduler", "api", "cli", "timers", "workers"])]
        which: String,
        /// One JSON object with the figures.
        #[arg(long)]
        json: bool,
        /// Directory to measure in (default: the database's directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `chronicle schedule ...`.
#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// Create a schedule of the workflow in FILE.
    Add {
        /// Its name.
        name: String,
        /// The workflow file (pinned now).
        file: PathBuf,
        /// Five-field crontab expression, e.g. '0 * * * *'.
        #[arg(long)]
        cron: String,
        /// Each run's input (JSON object).
        #[arg(long)]
        input: Option<String>,
        /// IANA time zone the expression is read in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// A nominal time while the last run still runs: skip or allow.
        #[arg(long, default_value = "skip", value_parser = ["skip", "allow"])]
        overlap: String,
        /// How far back missed times still fire after downtime.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        catch_up: std::time::Duration,
    },
    /// List schedules.
    List {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Pause a schedule.
    Pause {
        /// Its name.
        name: String,
    },
    /// Resume a paused schedule.
    Resume {
        /// Its name.
        name: String,
    },
    /// Delete a schedule (its history stays).
    Delete {
        /// Its name.
        name: String,
    },
    /// Fire a schedule now.
    Trigger {
        /// Its name.
        name: String,
    },
}
