//! Start-up steps that touch the machine, run once after the configuration is parsed and
//! before anything else starts: today, creating and probing the data dir.
//!
//! Why not during parsing: parsing stays free of side effects (a rejected option leaves
//! nothing behind, tests parse without a filesystem), and every effect of start-up is in
//! one place, in order. A failure here is still a configuration error: one sentence naming
//! `--data-dir`, exit status 2.
//!
//! Depends on `config` (it returns [`ConfigError`]); `config` never depends on this module.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, StorageConfig};

/// `serve`: prepares the data dir and points every setting at its absolute path.
pub fn prepare_serve(config: Config) -> Result<Config, ConfigError> {
    let data_dir = prepare_data_dir(&config.storage.data_dir)?;
    Ok(config.with_data_dir(data_dir))
}

/// `migrate`: prepares the data dir (the embedded cluster lives under it).
pub fn prepare_migrate(storage: StorageConfig) -> Result<StorageConfig, ConfigError> {
    let data_dir = prepare_data_dir(&storage.data_dir)?;
    Ok(storage.with_data_dir(data_dir))
}

/// Creates the data dir when missing, checks that it is a writable directory, and returns
/// its absolute path (child processes such as `pg_ctl` run from `/`).
pub fn prepare_data_dir(dir: &Path) -> Result<PathBuf, ConfigError> {
    let shown = dir.display().to_string();
    if dir.as_os_str().is_empty() {
        return Err(ConfigError::new("data-dir", shown, "must not be empty"));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        ConfigError::new(
            "data-dir",
            shown.clone(),
            format!("cannot create the directory ({e})"),
        )
    })?;
    let absolute = dir.canonicalize().map_err(|e| {
        ConfigError::new(
            "data-dir",
            shown.clone(),
            format!("cannot resolve the path ({e})"),
        )
    })?;
    if !absolute.is_dir() {
        return Err(ConfigError::new("data-dir", shown, "not a directory"));
    }
    static PROBE_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let probe = absolute.join(format!(
        ".rookery-write-probe-{}-{}",
        std::process::id(),
        PROBE_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&probe, b"probe").map_err(|e| {
        ConfigError::new(
            "data-dir",
            shown.clone(),
            format!("the directory is not writable ({e})"),
        )
    })?;
    std::fs::remove_file(&probe).map_err(|e| {
        ConfigError::new(
            "data-dir",
            shown.clone(),
            format!("the directory is not writable ({e})"),
        )
    })?;
    std::fs::read_dir(&absolute).map_err(|e| {
        ConfigError::new(
            "data-dir",
            shown,
            format!("the directory is not readable ({e})"),
        )
    })?;
    Ok(absolute)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command, StorageArgs};

    #[test]
    fn data_dir_under_a_file_is_rejected() {
        let file = std::env::temp_dir().join(format!("rookery-config-file-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let args = StorageArgs {
            data_dir: file.join("data"),
            database_url: None,
            postgres_bin_dir: None,
            db_pool_size: "4".into(),
            db_connect_timeout: "1s".into(),
            db_statement_timeout: "1s".into(),
            log_format: "text".into(),
        };
        // Parsing accepts the path; only start-up finds it unusable.
        let storage = StorageConfig::from_args(&args).expect("parses");
        let err = prepare_migrate(storage).expect_err("not a dir").to_string();
        std::fs::remove_file(&file).unwrap();
        assert!(err.starts_with("invalid --data-dir"), "{err}");
        assert!(err.contains("cannot create"), "{err}");
    }

    #[test]
    fn data_dir_is_created_and_made_absolute() {
        let temp = tempfile::tempdir().unwrap();
        let given = temp.path().join("a").join("..").join("data");
        let dir = prepare_data_dir(&given).expect("writable");
        assert!(dir.is_absolute() && dir.is_dir(), "{}", dir.display());
        assert_eq!(dir, temp.path().canonicalize().unwrap().join("data"));
        // The write probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn serve_settings_follow_the_prepared_data_dir() {
        use clap::Parser;
        let temp = tempfile::tempdir().unwrap();
        let given = temp.path().join("x").join("..").join("data");
        let argv = ["rookery", "serve", "--data-dir", given.to_str().unwrap()];
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!("parsed serve");
        };
        let config = prepare_serve(Config::from_serve_args(&args).unwrap()).unwrap();
        let expected = temp.path().canonicalize().unwrap().join("data");
        assert_eq!(config.storage.data_dir, expected);
        assert_eq!(config.event_log.data_dir, expected);
    }
}
