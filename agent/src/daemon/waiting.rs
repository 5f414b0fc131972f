//! An agent whose site config names no product yet: it waits, enforcing nothing.
//!
//! The package ships its config without a product and fills one in on first install
//! only when `portcullis detect` finds exactly one (`commands::detect`). Where it finds
//! none, guessing would enforce the wrong vendor's table, so the unit starts, reports
//! READY=1 with `STATUS=waiting: no product chosen ...`, loads and attaches nothing,
//! and writes `waiting.json` in the state directory so that `portcullis status` says
//! how to choose. A reload (SIGHUP, `systemctl reload portcullis`) reads the config
//! again: once it names a product the process executes itself anew (same pid, same
//! arguments, so systemd keeps tracking it) and starts as any agent does. SIGINT or
//! SIGTERM end the wait with exit code 0.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};

use super::notify::Notifier;
use crate::datapath::{paths::PathArgs, state::unix_now};

/// The file in the state directory that says an agent is waiting.
const WAITING_FILE: &str = "waiting.json";

/// What `waiting.json` holds (and `status --json` prints under `waiting`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Waiting {
    /// Why nothing is enforced.
    pub reason: String,
    /// The waiting agent's pid.
    pub pid: u32,
    /// The site config it waits on.
    pub config: PathBuf,
    /// Since when (seconds since the epoch).
    pub since: u64,
    /// How to choose the product.
    pub how_to_choose: String,
}

/// Whether the site config at `path` parses and names neither a product nor a profile
/// file: the packaged config before a product was chosen. A config that does not parse
/// is not "waiting": it is refused as any invalid policy is (exit code 3).
pub fn names_no_product(path: &Path) -> bool {
    crate::config::load_site(path).is_ok_and(|s| s.product.is_none() && s.profile.is_none())
}

/// The hint `status`, the log and the journal give.
pub fn how_to_choose(config: &Path) -> String {
    format!(
        "run `portcullis detect` to see which product this host runs (`portcullis profile list` lists them all), \
         set product = \"<slug>\" in {}, then `systemctl reload portcullis`",
        config.display()
    )
}

/// The waiting agent of this state directory, if one is running.
pub fn read(paths: &PathArgs) -> Option<Waiting> {
    let text = fs::read_to_string(paths.state_dir.join(WAITING_FILE)).ok()?;
    let waiting: Waiting = serde_json::from_str(&text).ok()?;
    let pid = i32::try_from(waiting.pid).ok()?;
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid, 0) } == 0).then_some(waiting)
}

/// Waits as the module docs say, until stopped (Ok: exit code 0) or a reload finds a
/// product (then this process is replaced and never returns).
pub fn wait(paths: &PathArgs, config: &Path) -> anyhow::Result<ExitCode> {
    let waiting = Waiting {
        reason: "no product chosen".into(),
        pid: std::process::id(),
        config: config.to_path_buf(),
        since: unix_now(),
        how_to_choose: how_to_choose(config),
    };
    let file = paths.state_dir.join(WAITING_FILE);
    fs::create_dir_all(&paths.state_dir)?;
    fs::write(&file, serde_json::to_string_pretty(&waiting)?)?;
    let line = format!(
        "waiting: no product chosen in {}; nothing is enforced",
        config.display()
    );
    log::warn!("{line}; {}", waiting.how_to_choose);
    println!("{line}");
    let notify = Notifier::from_env();
    notify.send(&format!("READY=1\nSTATUS={line}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(&notify, config, &line));
    let _ = fs::remove_file(&file);
    match result? {
        Wake::Stop => {
            notify.send("STOPPING=1");
            Ok(ExitCode::SUCCESS)
        }
        Wake::Chosen => {
            notify.reloading();
            Err(restart())
        }
    }
}

enum Wake {
    Stop,
    Chosen,
}

async fn serve(notify: &Notifier, config: &Path, line: &str) -> anyhow::Result<Wake> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut watchdog = tokio::time::interval(
        notify
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(3600)),
    );
    let watchdog_on = notify.watchdog_interval().is_some();
    loop {
        tokio::select! {
            _ = sighup.recv() => match crate::config::load_site(config) {
                Ok(site) if site.product.is_some() || site.profile.is_some() => {
                    log::info!("{}: a product is chosen; starting", config.display());
                    return Ok(Wake::Chosen);
                }
                Ok(_) => log::warn!("reload: {}", how_to_choose(config)),
                Err(e) => {
                    log::error!("reload: {e}");
                    notify.send(&format!("STATUS={line} ({e})"));
                }
            },
            _ = watchdog.tick(), if watchdog_on => notify.send("WATCHDOG=1"),
            _ = sigint.recv() => return Ok(Wake::Stop),
            _ = sigterm.recv() => return Ok(Wake::Stop),
        }
    }
}

/// Executes this program again with the same arguments: same pid, so the service
/// manager keeps it as the main process, and a fresh start that compiles the chosen
/// product. Returns only the error of a failed exec.
fn restart() -> anyhow::Error {
    let mut args = std::env::args_os();
    // argv[0] as the unit started it (/usr/bin/portcullis): after an upgrade replaced
    // the binary, /proc/self/exe names the deleted one.
    let program = args
        .next()
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/portcullis"));
    let err = Command::new(&program).args(args).exec();
    anyhow::Error::from(err).context(format!(
        "starting again as {} with a product chosen",
        program.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_valid_config_without_product_or_profile_waits() {
        let dir = std::env::temp_dir().join(format!("portcullis-waiting-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let config = dir.join("site.toml");
        for (text, waits) in [
            ("# product = \"<slug>\"\nmode = \"audit\"\n", true),
            ("product = \"iredmail\"\n", false),
            ("profile = \"mine.toml\"\n", false),
            // Invalid: refused as any invalid policy is (exit 3), never a silent wait.
            ("mode = \"enforcing\"\n", false),
        ] {
            fs::write(&config, text).unwrap();
            assert_eq!(names_no_product(&config), waits, "{text}");
        }
        let hint = how_to_choose(&config);
        assert!(hint.contains("portcullis detect") && hint.contains("systemctl reload"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_waiting_file_or_a_dead_pid_is_not_waiting() {
        let dir =
            std::env::temp_dir().join(format!("portcullis-waiting-pid-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let paths = PathArgs {
            pin_dir: None,
            state_dir: dir.clone(),
        };
        assert!(read(&paths).is_none());
        let mut w = Waiting {
            reason: "no product chosen".into(),
            pid: std::process::id(),
            config: "/etc/portcullis/portcullis.toml".into(),
            since: 0,
            how_to_choose: String::new(),
        };
        fs::write(dir.join(WAITING_FILE), serde_json::to_string(&w).unwrap()).unwrap();
        assert_eq!(read(&paths).map(|r| r.pid), Some(std::process::id()));
        w.pid = i32::MAX as u32;
        fs::write(dir.join(WAITING_FILE), serde_json::to_string(&w).unwrap()).unwrap();
        assert!(
            read(&paths).is_none(),
            "a waiting file left by a dead agent"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
