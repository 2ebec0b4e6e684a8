//! rookery-fleet: a simulated PDS fleet (PLC directory plus thousands of hosts on
//! 127.0.0.1) for manual testing and the network-scale benchmarks (`src/sim/fleet/`).
//!
//! - `table --hosts N --out FILE [--seed S]`: write a host table shaped like today's network.
//! - `run --table FILE [--rate R] [--duration D]`: keep the fleet up, print the host list a
//!   relay needs, and print progress until interrupted (or for `--duration`).
//! - `bench ramp|memory [--hosts N] [--table FILE] [--transport ws|wss] [--json]`: start the
//!   real `rookery serve` next to this binary on the fleet and print a result table; with
//!   `--json` the last line is one JSON object. Over `wss` (the default) the hosts serve TLS
//!   with the fleet's CA, which the relay is told to trust.
//!
//! Built with the `sim` feature (the tests build it through the crate's dev-dependency on
//! itself); without it the binary only says so.

#[cfg(feature = "sim")]
mod fleet_cli {
    use std::path::PathBuf;
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    use clap::{Parser, Subcommand};
    use rookery::sim::fleet::bench::{self, BenchOptions, Transport};
    use rookery::sim::fleet::{Fleet, FleetOptions, HostClass, HostTable};

    #[derive(Parser)]
    #[command(
        name = "rookery-fleet",
        about = "A simulated PDS fleet and the relay benchmarks that run on it"
    )]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Write a host table shaped like today's network.
        Table {
            #[arg(long, default_value_t = 3000)]
            hosts: usize,
            #[arg(long)]
            out: PathBuf,
            #[arg(long, default_value_t = 1)]
            seed: u64,
        },
        /// Keep a fleet up until interrupted, publishing at `--rate` events/s.
        Run {
            #[arg(long)]
            table: PathBuf,
            /// Aggregate events per second over the whole fleet.
            #[arg(long, default_value_t = 600.0)]
            rate: f64,
            /// Stop after this long (humantime, e.g. 10m) instead of at Ctrl-C.
            #[arg(long)]
            duration: Option<humantime::Duration>,
            #[arg(long, default_value_t = 1)]
            seed: u64,
        },
        /// Run a benchmark against `rookery serve`.
        Bench {
            #[arg(value_enum)]
            name: BenchName,
            #[arg(long, default_value_t = 3000)]
            hosts: usize,
            /// A host table file instead of a generated one.
            #[arg(long)]
            table: Option<PathBuf>,
            #[arg(long, default_value_t = 1)]
            seed: u64,
            /// Give up after this long (humantime).
            #[arg(long, default_value = "5m")]
            timeout: humantime::Duration,
            /// The relay binary (default: `rookery` next to this one).
            #[arg(long)]
            relay_bin: Option<PathBuf>,
            /// Print one JSON object as the last line.
            #[arg(long)]
            json: bool,
            /// How the relay reaches the hosts: wss (TLS with the fleet's CA) or ws.
            #[arg(long, value_enum, default_value = "wss")]
            transport: Transport,
        },
    }

    #[derive(Clone, Copy, clap::ValueEnum)]
    enum BenchName {
        Ramp,
        Memory,
    }

    pub async fn main() -> ExitCode {
        let cli = Cli::parse();
        let result = match cli.command {
            Command::Table { hosts, out, seed } => table(hosts, &out, seed),
            Command::Run {
                table,
                rate,
                duration,
                seed,
            } => run(&table, rate, duration.map(Into::into), seed).await,
            Command::Bench {
                name,
                hosts,
                table,
                seed,
                timeout,
                relay_bin,
                json,
                transport,
            } => {
                let options = BenchOptions {
                    hosts,
                    table,
                    seed,
                    timeout: timeout.into(),
                    relay_bin,
                    transport,
                };
                run_bench(name, &options, json).await
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rookery-fleet: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn table(hosts: usize, out: &std::path::Path, seed: u64) -> Result<(), String> {
        let table = HostTable::generate(hosts, seed);
        table
            .write(out)
            .map_err(|e| format!("{}: {e}", out.display()))?;
        for class in HostClass::ALL {
            println!(
                "{:<5} {:>5} hosts {:>7} accounts",
                class.as_str(),
                table.count(class),
                table.accounts(class)
            );
        }
        println!("wrote {}", out.display());
        Ok(())
    }

    async fn run(
        path: &std::path::Path,
        rate: f64,
        duration: Option<Duration>,
        seed: u64,
    ) -> Result<(), String> {
        rookery::sim::install_crypto_provider();
        let table = HostTable::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let fleet = Fleet::start(&table, FleetOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        println!("plc {}", fleet.plc.url());
        for host in &fleet.hosts {
            let state = if host.spec.is_dead() { " dead" } else { "" };
            println!("host {}{state}", host.pds.hostname());
        }
        println!(
            "fleet up: {} hosts, {} accounts, in {:.1} s; {rate} events/s",
            fleet.hosts.len(),
            table.total_accounts(),
            fleet.started_in.as_secs_f64()
        );
        let driver = fleet.drive(rate, seed);
        let begun = Instant::now();
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        ticks.tick().await;
        let mut last_events = 0;
        let mut last_busy = Duration::ZERO;
        let mut last = Instant::now();
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        loop {
            tokio::select! {
                _ = &mut interrupted => break,
                _ = ticks.tick() => {}
            }
            let stats = driver.stats();
            let (events, busy, now) = (stats.events(), stats.busy(), Instant::now());
            let window = now.duration_since(last).as_secs_f64();
            println!(
                "{:>7.0} s  hosts connected {}/{}  events {events} ({:.0}/s)  \
                 driver busy {:.1}%  errors {}  flaps {}",
                begun.elapsed().as_secs_f64(),
                fleet.connected(),
                fleet.reachable(),
                (events - last_events) as f64 / window,
                (busy - last_busy).as_secs_f64() * 100.0 / window,
                stats.errors(),
                stats.flaps(),
            );
            (last_events, last_busy, last) = (events, busy, now);
            if duration.is_some_and(|d| begun.elapsed() >= d) {
                break;
            }
        }
        drop(driver);
        fleet.stop().await;
        Ok(())
    }

    async fn run_bench(name: BenchName, options: &BenchOptions, json: bool) -> Result<(), String> {
        match name {
            BenchName::Ramp => {
                let result = bench::ramp(options).await.map_err(|e| e.to_string())?;
                println!("{}", result.table());
                if json {
                    println!("{}", result.json());
                }
            }
            BenchName::Memory => {
                let result = bench::memory(options).await.map_err(|e| e.to_string())?;
                println!("{}", result.table());
                if json {
                    println!("{}", result.json());
                }
            }
        }
        Ok(())
    }
}

#[cfg(feature = "sim")]
#[actix_rt::main]
async fn main() -> std::process::ExitCode {
    fleet_cli::main().await
}

#[cfg(not(feature = "sim"))]
fn main() -> std::process::ExitCode {
    eprintln!("rookery-fleet needs the `sim` feature: cargo build --features sim");
    std::process::ExitCode::FAILURE
}
