//! rookery-fleet: a simulated PDS fleet (PLC directory plus thousands of hosts on
//! 127.0.0.1) for manual testing and the network-scale benchmarks (`src/sim/fleet/`).
//!
//! - `table --hosts N --out FILE [--seed S]`: write a host table shaped like today's network.
//! - `run --table FILE [--rate R] [--duration D]`: keep the fleet up, print the host list a
//!   relay needs, and print progress until interrupted (or for `--duration`).
//! - `bench ramp|memory|ingest|fanout|replay|chaos [--hosts N] [--table FILE]
//!   [--transport ws|wss] [--json]`: start the real `rookery serve` next to this binary (on
//!   the fleet, except `replay`) and print a result table; with `--json` the last line is one
//!   JSON object. Over `wss` (the default) the hosts serve TLS with the fleet's CA, which the
//!   relay is told to trust. See `rookery::sim::fleet::bench` for what each measures.
//!   With `--relay-url URL` (and `--plc-port`) the benches measure a relay already running
//!   instead, whatever its implementation (`rookery::sim::fleet::bench::external`).
//!
//! Built with the `sim` feature (the tests build it through the crate's dev-dependency on
//! itself); without it the binary only says so.

#[cfg(feature = "sim")]
mod fleet_cli {
    use std::path::PathBuf;
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    use clap::{Parser, Subcommand};
    use rookery::sim::fleet::bench::{
        self, BenchOptions, ChaosOptions, ExternalRelaySettings, FanoutOptions, IngestOptions,
        ReplayOptions, Transport,
    };
    use rookery::sim::fleet::{
        EventDriver, EventFaults, Fleet, FleetOptions, HostClass, HostFaults, HostTable,
    };

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
            #[command(flatten)]
            faults: FaultArgs,
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
            /// How the relay reaches the hosts: wss (TLS with the fleet's CA; the default) or
            /// ws (the default with --relay-url: a relay already running cannot have been
            /// given the CA this run makes).
            #[arg(long, value_enum)]
            transport: Option<Transport>,
            /// `ingest`: offered rates (events/s), tried in order until one is not sustained.
            #[arg(
                long,
                value_delimiter = ',',
                default_value = "1000,2000,4000,8000,16000,32000"
            )]
            rates: Vec<f64>,
            /// `ingest`: how long each rate is offered (humantime).
            #[arg(long, default_value = "20s")]
            step: humantime::Duration,
            /// `ingest`: how long the relay gets after a step to deliver the rest.
            #[arg(long, default_value = "10s")]
            drain: humantime::Duration,
            /// `fanout`: live consumers.
            #[arg(long, default_value_t = 500)]
            consumers: usize,
            /// `fanout` and `chaos`: events/s the fleet publishes (default 1000 for
            /// `fanout`, 600 for `chaos`).
            #[arg(long)]
            rate: Option<f64>,
            /// `fanout` and `chaos`: how long the fleet publishes (humantime; default 30s
            /// for `fanout`, 10m for `chaos`).
            #[arg(long)]
            duration: Option<humantime::Duration>,
            /// `chaos`: when the relay gets SIGKILL and is restarted, from the start of
            /// publishing (humantime; default half the duration; `never` for none).
            #[arg(long)]
            restart_at: Option<String>,
            /// Faults (`chaos` has all of them on unless set here; the others none).
            #[command(flatten)]
            faults: FaultArgs,
            /// `fanout`: processes the consumers run in.
            #[arg(long, default_value_t = 2)]
            consumer_procs: usize,
            /// `replay`: size of the log written (bytes, or with a K, M or G suffix, powers
            /// of 1000).
            #[arg(long, default_value = "5G", value_parser = parse_size)]
            log_size: u64,
            #[command(flatten)]
            relay: Box<RelayArgs>,
        },
        /// The consumers of `bench fanout`, run in child processes.
        #[command(hide = true)]
        BenchConsumers {
            #[arg(long)]
            addr: std::net::SocketAddr,
            #[arg(long)]
            consumers: usize,
            #[arg(long, default_value_t = 20)]
            sample: u64,
        },
    }

    fn parse_size(raw: &str) -> Result<u64, String> {
        let (digits, unit) = match raw.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => raw.split_at(i),
            None => (raw, ""),
        };
        let n: u64 = digits.parse().map_err(|_| format!("not a size: {raw:?}"))?;
        let scale: u64 = match unit {
            "" => 1,
            "K" | "k" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            _ => return Err(format!("unknown unit in {raw:?} (K, M or G)")),
        };
        n.checked_mul(scale)
            .ok_or_else(|| format!("too large: {raw:?}"))
    }

    /// A relay already running, measured instead of a spawned `rookery serve`.
    #[derive(clap::Args, Debug, Clone)]
    struct RelayArgs {
        /// The public base URL of a relay already running (http:// only: the firehose is
        /// read over plain ws://), e.g. http://127.0.0.1:2470. Requires --plc-port.
        #[arg(long, requires = "plc_port")]
        relay_url: Option<url::Url>,
        /// Its admin base URL: hosts are added with POST /admin/pds/requestCrawl (HTTP Basic
        /// admin:password) and their account limit raised with /admin/pds/changeLimits;
        /// without it, with the public com.atproto.sync.requestCrawl.
        #[arg(long, requires_all = ["relay_url", "relay_admin_password"])]
        relay_admin_url: Option<url::Url>,
        /// Its admin password (or RELAY_ADMIN_PASSWORD, as goat reads it); used only with
        /// --relay-admin-url.
        #[arg(long, env = "RELAY_ADMIN_PASSWORD", hide_env_values = true)]
        relay_admin_password: Option<String>,
        /// What the health probe asks on the relay URL.
        #[arg(long, default_value = "/_health", requires = "relay_url")]
        health_path: String,
        /// `PATH#/json/pointer` on the relay URL whose number is the hosts connected (e.g.
        /// /_readyz#/hosts/connected for rookery); default: the fleet's own view (hosts
        /// with a live subscriber).
        #[arg(long, requires = "relay_url")]
        connected_path: Option<String>,
        /// The fleet's PLC directory listens on 127.0.0.1:PORT: start the relay with
        /// http://127.0.0.1:PORT as its PLC URL.
        #[arg(long, requires = "relay_url")]
        plc_port: Option<u16>,
    }

    impl RelayArgs {
        fn settings(&self) -> Option<ExternalRelaySettings> {
            let url = self.relay_url.clone()?;
            Some(ExternalRelaySettings {
                admin: self
                    .relay_admin_url
                    .clone()
                    .zip(self.relay_admin_password.clone()),
                health_path: self.health_path.clone(),
                connected_path: self.connected_path.clone(),
                ..ExternalRelaySettings::new(url)
            })
        }
    }

    #[derive(Clone, Copy, clap::ValueEnum)]
    enum BenchName {
        Ramp,
        Memory,
        Ingest,
        Fanout,
        Replay,
        Chaos,
    }

    /// Fault flags: shares of hosts or events (0–1) and rates per minute.
    #[derive(clap::Args, Debug, Clone, Default)]
    struct FaultArgs {
        /// Share of hosts that refuse connections all run.
        #[arg(long)]
        dead_hosts: Option<f64>,
        /// Share of hosts that drop their connections every 20 s.
        #[arg(long)]
        flapping_hosts: Option<f64>,
        /// Share of hosts that accept a websocket and drop it at once.
        #[arg(long)]
        accept_drop_hosts: Option<f64>,
        /// Share of hosts that wait 100 ms before each frame.
        #[arg(long)]
        slow_hosts: Option<f64>,
        /// Share of hosts whose `Server` header claims a relay.
        #[arg(long)]
        relay_hosts: Option<f64>,
        /// Share of events signed with the wrong key.
        #[arg(long)]
        bad_signatures: Option<f64>,
        /// Share of events that are another host's accounts' commits.
        #[arg(long)]
        wrong_authority: Option<f64>,
        /// Share of events with a rev an hour ahead.
        #[arg(long)]
        future_revs: Option<f64>,
        /// Share of events with blocks over the 2 MB limit.
        #[arg(long)]
        oversized: Option<f64>,
        /// Share of events that are garbage bytes.
        #[arg(long)]
        garbage: Option<f64>,
        /// Share of events that repeat a recent frame (a seq going backwards).
        #[arg(long)]
        out_of_order: Option<f64>,
        /// Hosts per minute that forget their events (a relay's cursor → FutureCursor).
        #[arg(long)]
        resets_per_min: Option<f64>,
        /// Hosts per minute that restart without their outbox.
        #[arg(long)]
        restarts_per_min: Option<f64>,
    }

    impl FaultArgs {
        fn host_faults(&self, base: HostFaults) -> HostFaults {
            HostFaults {
                dead: self.dead_hosts.unwrap_or(base.dead),
                flapping: self.flapping_hosts.unwrap_or(base.flapping),
                accept_then_drop: self.accept_drop_hosts.unwrap_or(base.accept_then_drop),
                slow: self.slow_hosts.unwrap_or(base.slow),
                claims_relay: self.relay_hosts.unwrap_or(base.claims_relay),
            }
        }

        fn event_faults(&self, base: EventFaults) -> EventFaults {
            EventFaults {
                bad_signature: self.bad_signatures.unwrap_or(base.bad_signature),
                wrong_authority: self.wrong_authority.unwrap_or(base.wrong_authority),
                future_rev: self.future_revs.unwrap_or(base.future_rev),
                oversized: self.oversized.unwrap_or(base.oversized),
                garbage: self.garbage.unwrap_or(base.garbage),
                out_of_order: self.out_of_order.unwrap_or(base.out_of_order),
                resets_per_min: self.resets_per_min.unwrap_or(base.resets_per_min),
                restarts_per_min: self.restarts_per_min.unwrap_or(base.restarts_per_min),
            }
        }
    }

    fn chaos_options(
        rate: Option<f64>,
        duration: Option<Duration>,
        restart_at: Option<&str>,
        faults: &FaultArgs,
    ) -> Result<ChaosOptions, String> {
        let defaults = ChaosOptions::default();
        let duration = duration.unwrap_or(defaults.duration);
        let restart_at = match restart_at {
            None => Some(duration / 2),
            Some("never") => None,
            Some(at) => {
                Some(humantime::parse_duration(at).map_err(|e| format!("--restart-at {at}: {e}"))?)
            }
        };
        let faults = faults.event_faults(EventFaults::chaos());
        faults.check()?;
        Ok(ChaosOptions {
            duration,
            rate: rate.unwrap_or(defaults.rate),
            faults,
            restart_at,
            drain: defaults.drain,
        })
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
                faults,
            } => run(&table, rate, duration.map(Into::into), seed, &faults).await,
            Command::Bench {
                name,
                hosts,
                table,
                seed,
                timeout,
                relay_bin,
                json,
                transport,
                rates,
                step,
                drain,
                consumers,
                rate,
                duration,
                restart_at,
                faults,
                consumer_procs,
                log_size,
                relay,
            } => {
                let chaotic = matches!(name, BenchName::Chaos);
                let mut options = BenchOptions {
                    hosts,
                    table,
                    seed,
                    timeout: timeout.into(),
                    relay_bin,
                    relay_env: Vec::new(),
                    host_faults: faults.host_faults(if chaotic {
                        HostFaults::chaos()
                    } else {
                        HostFaults::default()
                    }),
                    transport: transport.unwrap_or(if relay.relay_url.is_some() {
                        Transport::Ws
                    } else {
                        Transport::Wss
                    }),
                    external: relay.settings(),
                    plc_port: relay.plc_port.unwrap_or(0),
                };
                if !matches!(name, BenchName::Ramp | BenchName::Memory) {
                    // What these measure starts after the ramp: do not wait out production's
                    // 20 s startup spread (ROOKERY_STARTUP_SPREAD in the environment wins).
                    options.default_relay_env("ROOKERY_STARTUP_SPREAD", "5s");
                }
                if matches!(name, BenchName::Fanout) {
                    // Every consumer comes from 127.0.0.1: lift the per-address limit (50 by
                    // default) above them (an external relay needs the same setting).
                    options.default_relay_env(
                        "ROOKERY_MAX_CONSUMERS_PER_IP",
                        &(consumers + 10).to_string(),
                    );
                }
                let settings = Settings {
                    ingest: IngestOptions {
                        rates,
                        step: step.into(),
                        drain: drain.into(),
                    },
                    fanout: FanoutOptions {
                        consumers,
                        rate: rate.unwrap_or(1000.0),
                        duration: duration.map_or(Duration::from_secs(30), Into::into),
                        procs: consumer_procs,
                    },
                    chaos: chaos_options(
                        rate,
                        duration.map(Into::into),
                        restart_at.as_deref(),
                        &faults,
                    ),
                    replay: ReplayOptions {
                        log_bytes: log_size,
                    },
                };
                match settings.chaos {
                    Ok(_) => run_bench(name, &options, &settings, json).await,
                    Err(e) => Err(e),
                }
            }
            Command::BenchConsumers {
                addr,
                consumers,
                sample,
            } => bench::run_consumers(addr, consumers, sample).await,
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
        faults: &FaultArgs,
    ) -> Result<(), String> {
        rookery::sim::install_crypto_provider();
        let mut table = HostTable::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
        faults
            .host_faults(HostFaults::default())
            .apply(&mut table)?;
        let event_faults = faults.event_faults(EventFaults::default());
        event_faults.check()?;
        let fleet = Fleet::start(&table, FleetOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        println!("plc {}", fleet.plc.url());
        for host in &fleet.hosts {
            let faults: Vec<String> = host
                .spec
                .faults
                .iter()
                .filter_map(|f| serde_json::to_value(f).ok())
                .filter_map(|v| v["fault"].as_str().map(str::to_string))
                .collect();
            println!("host {} {}", host.pds.hostname(), faults.join(" "));
        }
        println!(
            "fleet up: {} hosts, {} accounts, in {:.1} s; {rate} events/s",
            fleet.hosts.len(),
            table.total_accounts(),
            fleet.started_in.as_secs_f64()
        );
        let driver = EventDriver::start_with_faults(&fleet, rate, seed, event_faults);
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
                 driver busy {:.1}%  errors {}  invalid {}  flaps {}  resets {}  \
                 restarts {}",
                begun.elapsed().as_secs_f64(),
                fleet.connected(),
                fleet.reachable(),
                (events - last_events) as f64 / window,
                (busy - last_busy).as_secs_f64() * 100.0 / window,
                stats.errors(),
                stats.invalid(),
                stats.flaps(),
                stats.resets(),
                stats.restarts(),
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

    /// The benchmark-specific flags.
    struct Settings {
        chaos: Result<ChaosOptions, String>,
        ingest: IngestOptions,
        fanout: FanoutOptions,
        replay: ReplayOptions,
    }

    async fn run_bench(
        name: BenchName,
        options: &BenchOptions,
        settings: &Settings,
        json: bool,
    ) -> Result<(), String> {
        let (table, object) = match name {
            BenchName::Ramp => {
                let r = bench::ramp(options).await.map_err(|e| e.to_string())?;
                (r.table(), r.json())
            }
            BenchName::Memory => {
                let r = bench::memory(options).await.map_err(|e| e.to_string())?;
                (r.table(), r.json())
            }
            BenchName::Ingest => {
                let r = bench::ingest(options, &settings.ingest)
                    .await
                    .map_err(|e| e.to_string())?;
                (r.table(), r.json())
            }
            BenchName::Fanout => {
                let r = bench::fanout(options, &settings.fanout)
                    .await
                    .map_err(|e| e.to_string())?;
                (r.table(), r.json())
            }
            BenchName::Replay => {
                let r = bench::replay(options, &settings.replay)
                    .await
                    .map_err(|e| e.to_string())?;
                (r.table(), r.json())
            }
            BenchName::Chaos => {
                let chaos = settings.chaos.as_ref().map_err(Clone::clone)?;
                let r = bench::chaos(options, chaos)
                    .await
                    .map_err(|e| e.to_string())?;
                (r.table(), r.json())
            }
        };
        // Which relay the figures are of: they may sit beside another relay's.
        let (measured, mut object) = match &options.external {
            None => ("rookery serve, spawned by this bench".to_string(), object),
            Some(external) => {
                let mut object = object;
                object["relay_url"] = serde_json::json!(external.url.as_str());
                (format!("{} (already running)", external.url), object)
            }
        };
        object["relay"] = serde_json::json!(measured);
        println!("{table}\nrelay measured             {measured}");
        if json {
            println!("{object}");
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
