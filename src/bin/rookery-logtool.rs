//! rookery-logtool: inspect an event log directory offline, and drive a writer for
//! crash tests.
//!
//! - `stat <data-dir>`: open the log (runs recovery; refuses while a relay holds it)
//!   and print the recovery report and stats.
//! - `dump <data-dir> --after N [--limit M]`: print records after seq N, one per line.
//! - `append-loop <data-dir> ...` (built with the `testkit` feature, as the tests build it):
//!   append synthetic records (body = `testkit::event_log::synthetic_body`)
//!   forever or up to `--records`, printing `durable <head>` after every append. The
//!   crash test (tests/event_log/crash.rs) SIGKILLs it at random moments and checks that
//!   every head it printed survived. On an append error it prints `error <reason>`,
//!   tries once more (printing `retry <reason>`, expected `writer_poisoned`) and exits 1.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
#[cfg(feature = "testkit")]
use rookery::store::event_log::{AppendRecord, SyncPolicy, did_hash};
use rookery::store::event_log::{EventLog, EventLogConfig};

#[derive(Parser)]
#[command(
    name = "rookery-logtool",
    about = "Inspect and exercise a rookery event log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Recover the log and print its statistics.
    Stat { data_dir: PathBuf },
    /// Print records after a seq.
    Dump {
        data_dir: PathBuf,
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Append synthetic records and print each durable head (for crash tests).
    #[cfg(feature = "testkit")]
    AppendLoop {
        data_dir: PathBuf,
        #[arg(long, default_value_t = 200)]
        body_size: usize,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Stop after this many records (0: run until killed).
        #[arg(long, default_value_t = 0)]
        records: u64,
        #[arg(long, default_value = "every-batch")]
        sync: SyncPolicy,
        #[arg(long, default_value_t = 64 * 1024)]
        segment_max_bytes: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rookery-logtool: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Stat { data_dir } => {
            let (log, report) = EventLog::open(EventLogConfig::new(data_dir))?;
            writeln!(out, "recovery: {report:?}")?;
            writeln!(out, "stats: {:?}", log.stats())?;
            writeln!(out, "next_seq: {}", log.next_seq())?;
        }
        Command::Dump {
            data_dir,
            after,
            limit,
        } => {
            let (log, _) = EventLog::open(EventLogConfig::new(data_dir))?;
            let mut replay = log.reader().read_after(after)?;
            let mut printed = 0;
            while printed < limit {
                let batch = replay.next_batch(limit - printed, 4 * 1024 * 1024)?;
                if batch.is_empty() {
                    break;
                }
                for r in batch {
                    writeln!(
                        out,
                        "seq={} kind={} flags={:#04x} did_hash={:016x} ts_ms={} len={}",
                        r.seq,
                        r.kind,
                        r.flags,
                        r.did_hash,
                        r.timestamp_ms,
                        r.body.len()
                    )?;
                    printed += 1;
                }
            }
        }
        #[cfg(feature = "testkit")]
        Command::AppendLoop {
            data_dir,
            body_size,
            batch,
            records,
            sync,
            segment_max_bytes,
        } => {
            let mut config = EventLogConfig::new(data_dir);
            config.sync = sync;
            config.segment_max_bytes = segment_max_bytes;
            let (mut log, report) = EventLog::open(config)?;
            writeln!(
                out,
                "opened next_seq={} truncated={}",
                log.next_seq(),
                report.bytes_truncated
            )?;
            out.flush()?;
            let did = did_hash("did:plc:crashwriter");
            let mut written = 0u64;
            while records == 0 || written < records {
                let first = log.next_seq();
                let recs: Vec<AppendRecord> = (0..batch.max(1) as u64)
                    .map(|i| AppendRecord {
                        seq: first + i,
                        kind: 1,
                        did_hash: did,
                        body: rookery::testkit::event_log::synthetic_body(first + i, body_size),
                    })
                    .collect();
                let head = match log.append(&recs) {
                    Ok(head) => head,
                    Err(e) => {
                        // Report the typed failure, then show that the writer refuses
                        // further appends instead of writing after a possible hole.
                        writeln!(out, "error {}", e.reason())?;
                        if let Err(again) = log.append(&recs) {
                            writeln!(out, "retry {}", again.reason())?;
                        }
                        out.flush()?;
                        return Err(e.into());
                    }
                };
                written += recs.len() as u64;
                writeln!(out, "durable {head}")?;
                out.flush()?;
            }
        }
    }
    Ok(())
}
