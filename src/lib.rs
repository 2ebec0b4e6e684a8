//! rookery: an AT Protocol relay built on supervised actors.
//!
//! The tree follows the architecture (see README "Code organisation"):
//! `atproto` is the protocol core (pure, synchronous, no I/O), `store` holds the
//! event log and Postgres access, `http` the HTTP surfaces, `actors` the ingest actors,
//! `service` what the relay tells its service manager (readiness, watchdog, status) and the
//! bound on its shutdown, `config` parses the command line into each subsystem's settings,
//! `startup` prepares the data dir before anything runs.
//!
//! Dependencies point one way: `startup` → `config` → `store`, `http`; `atproto` imports
//! none of them. No subsystem imports `config`: each owns its settings type and `config`
//! fills it. The layers, each using only those before it: `atproto`, `store`, `actors`,
//! `http`, `service`, `config`, `startup`, `testkit`, `sim` (checked by a test below).
//! `http` comes after `actors` because the surfaces answer with the actors' rules (an
//! account's published status, a host's status) and the admin API sends them messages.
//! `service` reads the actors' state for its watchdog. `sim` (the simulated PDS hosts and
//! PLC directory, behind the `sim` feature) builds on `testkit`.

#![forbid(unsafe_code)]

pub mod actors;
pub mod atproto;
pub mod config;
pub mod http;
pub mod service;
#[cfg(feature = "sim")]
pub mod sim;
pub mod startup;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The top-level modules, each allowed to use only those before it.
    const LAYERS: [&str; 9] = [
        "atproto", "store", "actors", "http", "service", "config", "startup", "testkit", "sim",
    ];

    fn sources(path: &Path, out: &mut Vec<(String, String)>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).expect("src dir") {
                sources(&entry.expect("dir entry").path(), out);
            }
        } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(path).expect("source");
            out.push((path.display().to_string(), text));
        }
    }

    /// The module graph of the library has no cycle: no code path under a module names
    /// (`crate::x`) a module of a later layer. Comments are not code.
    #[test]
    fn top_level_modules_depend_only_on_earlier_layers() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for (layer, name) in LAYERS.iter().enumerate() {
            let mut files = Vec::new();
            sources(&src.join(name), &mut files);
            sources(&src.join(format!("{name}.rs")), &mut files);
            assert!(!files.is_empty(), "no source for {name}");
            for (file, text) in files {
                for line in text.lines().map(str::trim_start) {
                    if line.starts_with("//") {
                        continue;
                    }
                    for later in &LAYERS[layer + 1..] {
                        assert!(
                            !line.contains(&format!("crate::{later}")),
                            "{file} ({name}) uses the later layer {later}: `{line}`"
                        );
                    }
                }
            }
        }
    }
}
