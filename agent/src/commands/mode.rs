//! `portcullis mode audit|enforce`: switches the running policy between counting and
//! dropping with one write of the configuration map, without reloading anything.
//!
//! Without `--persist` the switch lasts until the next reload or restart, which apply
//! the config's `mode` again, and the command says so: a silent return to audit (or to
//! enforce) is what an operator would not expect. With `--persist` the config file the
//! agent runs is rewritten first: only its `mode` line changes (comments and layout
//! kept, with `toml_edit`, already in the build through `toml`), the result is parsed and
//! compiled like `check` would before it replaces the file (a temporary file in the same
//! directory, then a rename, so a reader sees the old file or the new one), and only
//! then is the running mode switched.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    config::site::Site,
    datapath::{
        loader::write_mode,
        paths::PathArgs,
        state::{InstallLock, State},
    },
    model::Mode,
    policy::compiler,
};

const EXAMPLES: &str = "\
Without --persist, the next reload or restart returns to the config's mode (the
command says which). --persist writes the mode into the config file the agent runs
(validated, atomically, comments kept) before switching.

Examples:
  portcullis mode enforce --persist   # enforce now and after reloads and restarts
  portcullis mode audit               # audit until the next reload
  portcullis mode enforce --json | jq .reload_returns_to";

/// Arguments of `portcullis mode`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The new mode.
    #[arg(value_enum)]
    pub mode: Mode,
    /// Also write the mode into the agent's config file, so reloads and restarts keep it.
    #[arg(long)]
    pub persist: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// What `mode --json` prints.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// The mode now running.
    pub mode: Mode,
    /// The mode before.
    pub was: Mode,
    /// The config file the agent runs (null: started without one).
    pub config: Option<PathBuf>,
    /// The mode that file says (after --persist: the new one).
    pub config_mode: Option<Mode>,
    /// Whether this command wrote the file.
    pub persisted: bool,
    /// The mode the next reload or restart applies, when it differs from `mode`.
    pub reload_returns_to: Option<Mode>,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state_file = args.paths.state_file();
    // Serialised with the agent's installs: see `InstallLock`.
    let _lock = InstallLock::take(&args.paths.state_dir)?;
    let mut state = State::read(&state_file)?;
    let config = state.config.clone();
    let mut config_mode = match &config {
        Some(path) => Some(crate::config::load_site(path)?.mode),
        None => None,
    };
    let mut persisted = false;
    if args.persist {
        let Some(path) = &config else {
            bail!(
                "the agent runs without a config file, so there is nothing to persist the mode in; \
                 hint: start it with --config FILE, or drop --persist"
            );
        };
        if config_mode != Some(args.mode) {
            persist(path, args.mode)?;
            persisted = true;
        }
        config_mode = Some(args.mode);
    }
    let was = write_mode(&args.paths, args.mode)?;
    state.mode = args.mode;
    state.write(&state_file)?;
    let out = Outcome {
        mode: args.mode,
        was,
        reload_returns_to: config_mode.filter(|m| *m != args.mode),
        config,
        config_mode,
        persisted,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", text(&out));
    }
    Ok(ExitCode::SUCCESS)
}

/// The text form: the switch, then what a reload will do.
fn text(o: &Outcome) -> String {
    let mut s = format!("mode: {} (was {})", o.mode, o.was);
    match (&o.config, o.reload_returns_to) {
        (Some(path), _) if o.persisted => s.push_str(&format!(
            "\nwritten to {}: reloads and restarts keep {}",
            path.display(),
            o.mode
        )),
        (Some(path), Some(back)) => s.push_str(&format!(
            "\n{} says mode = \"{back}\": the next reload or restart returns to {back} \
             (run with --persist to write {} there)",
            path.display(),
            o.mode
        )),
        (Some(path), None) => s.push_str(&format!(
            "\n{} says {} too: reloads and restarts keep it",
            path.display(),
            o.mode
        )),
        (None, _) => s.push_str(
            "\nthe agent runs without a config file: a restart applies its command line's mode",
        ),
    }
    s
}

/// `text` with its top-level `mode` set to `mode`, comments and layout kept.
fn with_mode(text: &str, mode: Mode) -> anyhow::Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("parsing the config as TOML")?;
    let old = doc
        .get("mode")
        .and_then(|i| i.as_value())
        .map(|v| v.decor().clone());
    let mut value = toml_edit::Value::from(mode.as_str());
    if let Some(decor) = old {
        // Keep a trailing comment on the line (`mode = "audit"  # until ...`).
        *value.decor_mut() = decor;
    }
    doc["mode"] = toml_edit::Item::Value(value);
    let mut out = doc.to_string();
    // toml_edit ends the last line; a file that did not keeps its last byte.
    if !text.ends_with('\n') && out.ends_with('\n') && text.lines().count() == out.lines().count() {
        out.pop();
    }
    Ok(out)
}

/// Rewrites `path` with `mode`: validated as a site config and compiled before it
/// replaces the file, through a temporary file and a rename; the file's permissions are
/// kept.
fn persist(path: &Path, mode: Mode) -> anyhow::Result<()> {
    let old = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let new = with_mode(&old, mode).with_context(|| format!("editing {}", path.display()))?;
    // The same checks as `portcullis check` (file and line on error), on the new text,
    // resolved relative to the real file.
    let site = Site::parse(&new, path)?;
    compiler::compile_site(&site, Some(path))?;
    if site.mode != mode {
        bail!(
            "{}: the edited file does not say mode = \"{mode}\"",
            path.display()
        );
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "config".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.portcullis-mode.tmp"));
    let perms = fs::metadata(path)?.permissions().mode();
    fs::write(&tmp, &new).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(perms))?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_line_changes_and_nothing_else() {
        let text = "# the gateway\nproduct = \"xeams\"\nmode = \"audit\"  # until the window is long enough\nfailsafe = true\n\n[metrics]\nlisten = \"127.0.0.1:9975\"\n";
        let new = with_mode(text, Mode::Enforce).unwrap();
        assert_eq!(new, text.replace("mode = \"audit\"", "mode = \"enforce\""));
        // No newline at the end: none added.
        let last = "product = \"xeams\"\nmode = \"audit\"";
        assert_eq!(
            with_mode(last, Mode::Enforce).unwrap(),
            "product = \"xeams\"\nmode = \"enforce\""
        );
        // No mode line yet: one is added, the rest stays.
        let bare = "product = \"xeams\" # ours\n";
        let new = with_mode(bare, Mode::Enforce).unwrap();
        assert!(new.starts_with(bare), "{new}");
        assert!(new.contains("mode = \"enforce\""), "{new}");
    }

    #[test]
    fn persisting_validates_and_replaces_atomically() {
        let dir = std::env::temp_dir().join(format!("portcullis-mode-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("site.toml");
        let text = "# comment kept\nproduct = \"xeams\"\nmode = \"audit\"\n";
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        persist(&path, Mode::Enforce).unwrap();
        let new = fs::read_to_string(&path).unwrap();
        assert_eq!(
            new,
            "# comment kept\nproduct = \"xeams\"\nmode = \"enforce\"\n"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // An invalid config is refused and left as it was, with no temporary file.
        let bad = "product = \"xeams\"\nmode = \"audit\"\nfeatures = [\"no-such-feature\"]\n";
        fs::write(&path, bad).unwrap();
        let err = persist(&path, Mode::Enforce).unwrap_err().to_string();
        assert!(err.contains("no-such-feature"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), bad);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
