//! What a unit scope names, asked of systemd (`systemctl show`, `list-units`): whether
//! the unit exists, whether it runs anything worth protecting, which instances a
//! template has, and which unit a cgroup path that does not exist probably meant.
//!
//! `check` and `run` both go through [`check_scopes`], so a scope that would protect
//! nothing is refused (exit code 3) before anything is attached, the same way in both:
//! - a oneshot that runs no process (Debian's `postfix.service`: `ExecStart=/bin/true`,
//!   `RemainAfterExit=yes`) would be "protected" while the daemon runs in another unit;
//!   the error names the units that do the work (its ConsistsOf, Wants, Requires);
//! - a unit systemd does not know is a typo until proven otherwise: an error with the
//!   nearest loaded or installed service;
//! - a template (`postfix@.service`) stands for every instance: its drop-in applies to
//!   each start of each instance, and [`instances`] lists the running ones to attach now;
//! - a unit started by socket activation is refused: PID 1 creates the listening socket,
//!   so the connections it accepts belong to PID 1's cgroup and the unit's ingress
//!   program never judges them (measured on the systemd host: an inbound connection to
//!   a port no rule opens got through, where the same server without the .socket was
//!   refused);
//! - a cgroup path that does not exist is accepted (it is attached when it appears) with
//!   a warning that names the nearest unit.

use std::{collections::BTreeMap, path::Path, process::Command};

use crate::{config::PolicyError, model::ScopeTarget};

/// Commands that do nothing: a oneshot whose ExecStart is only these runs no process to
/// protect.
const NO_OP: [&str; 2] = ["/bin/true", "/usr/bin/true"];

/// The properties [`show`] reads.
const PROPERTIES: &str = "Id,LoadState,ActiveState,Type,ExecStart,ConsistsOf,Wants,Requires,BindsTo,ControlGroup,TriggeredBy";

/// Whether `name` is a template (`postfix@.service`), not an instance or a plain unit.
pub fn is_template(name: &str) -> bool {
    name.split_once('@')
        .is_some_and(|(_, rest)| rest.starts_with('.'))
}

/// The instances of a template that systemd has loaded now (running or not), e.g.
/// `postfix@-.service` for `postfix@.service`.
pub fn instances(template: &str) -> Vec<String> {
    let Some((prefix, suffix)) = template.split_once("@.") else {
        return Vec::new();
    };
    list(&[
        "list-units",
        "--all",
        "--plain",
        "--no-legend",
        "--full",
        &format!("{prefix}@*.{suffix}"),
    ])
    .into_iter()
    .filter(|u| u.starts_with(&format!("{prefix}@")) && !is_template(u))
    .collect()
}

/// The first column of a `systemctl list-*` listing.
fn list(args: &[&str]) -> Vec<String> {
    let Ok(out) = Command::new("systemctl").args(args).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        // `list-units` marks failed units with a leading "●".
        .filter(|n| n.contains('.'))
        .map(str::to_owned)
        .collect()
}

/// Every service unit systemd has loaded or has a unit file for.
fn known_services() -> Vec<String> {
    let mut names = list(&[
        "list-units",
        "--all",
        "--type=service",
        "--plain",
        "--no-legend",
        "--full",
    ]);
    names.extend(list(&[
        "list-unit-files",
        "--type=service",
        "--no-legend",
        "--full",
    ]));
    names.sort();
    names.dedup();
    names
}

/// A unit's properties as `systemctl show` gives them (empty when systemctl failed).
fn show(unit: &str) -> BTreeMap<String, String> {
    let Ok(out) = Command::new("systemctl")
        .args(["show", "-p", PROPERTIES, "--", unit])
        .output()
    else {
        return BTreeMap::new();
    };
    parse_show(&String::from_utf8_lossy(&out.stdout))
}

/// `Key=value` lines into a map.
fn parse_show(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The program paths of an `ExecStart`-like property: `{ path=/bin/true ; argv[]=... }`
/// once per command.
fn exec_paths(value: &str) -> Vec<&str> {
    value
        .split("path=")
        .skip(1)
        .filter_map(|rest| rest.split([' ', ';']).next())
        .collect()
}

/// Whether a unit with these properties runs no process worth protecting: a oneshot
/// whose every ExecStart is a no-op (or that has none).
fn runs_nothing(props: &BTreeMap<String, String>) -> bool {
    props.get("Type").map(String::as_str) == Some("oneshot")
        && exec_paths(props.get("ExecStart").map_or("", String::as_str))
            .iter()
            .all(|p| NO_OP.contains(p))
}

/// The services that do a no-op unit's work: its ConsistsOf (the units `PartOf=` it),
/// Wants, Requires and BindsTo, that are services and run something themselves.
fn workers(props: &BTreeMap<String, String>) -> Vec<String> {
    let mut units: Vec<String> = ["ConsistsOf", "Wants", "Requires", "BindsTo"]
        .iter()
        .filter_map(|k| props.get(*k))
        .flat_map(|v| v.split_whitespace())
        .filter(|u| u.ends_with(".service"))
        .map(str::to_owned)
        .collect();
    units.sort();
    units.dedup();
    units.retain(|u| !runs_nothing(&show(u)));
    units
}

/// Levenshtein distance, for did-you-mean.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The candidate nearest to `name`, if near enough to be a typo of it (at most a third
/// of its length apart), or sharing the name before `.`/`@` (postfix.service and
/// postfix@-.service).
fn nearest<'a>(name: &str, candidates: &'a [String]) -> Option<&'a str> {
    let stem = |n: &str| n.split(['.', '@']).next().unwrap_or("").to_owned();
    candidates
        .iter()
        .map(|c| (distance(name, c), c))
        .filter(|(d, c)| *d <= name.len() / 3 || stem(c) == stem(name))
        .min()
        .map(|(_, c)| c.as_str())
}

/// What [`check_scopes`] found that is not an error.
#[derive(Debug, Default)]
pub struct ScopeCheck {
    /// Lines for the admin ("warning: ..."), each about one scope.
    pub warnings: Vec<String>,
}

/// Checks the scopes against systemd and the cgroup tree (see the module docs). `config`
/// is the file the scopes came from, for the error's position.
pub fn check_scopes(
    scopes: &[ScopeTarget],
    cgroup_root: Option<&Path>,
    config: Option<&Path>,
) -> Result<ScopeCheck, PolicyError> {
    let mut found = ScopeCheck::default();
    for scope in scopes {
        match scope {
            ScopeTarget::Host => {}
            ScopeTarget::Unit(name) => check_unit(name).map_err(|e| place(e, config, name))?,
            ScopeTarget::Cgroup(path) => {
                let Some(root) = cgroup_root else { continue };
                let full = if path.is_absolute() {
                    path.clone()
                } else {
                    root.join(path)
                };
                if full.join("cgroup.procs").is_file() {
                    continue;
                }
                let leaf = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                let near = if super::is_running() {
                    nearest(leaf, &known_services()).map(|u| {
                        // A unit that runs nothing has no cgroup: name the one doing its work.
                        let props = show(u);
                        let worker = runs_nothing(&props).then(|| workers(&props)).and_then(|w| w.into_iter().next());
                        let u = worker.as_deref().unwrap_or(u);
                        let cg = super::control_group(u)
                            .map(|c| format!(" (cgroup {})", c.display()))
                            .unwrap_or_default();
                        format!("; the nearest unit is \"{u}\"{cg}: write scope = [\"{u}\"] to follow its restarts")
                    })
                } else {
                    None
                };
                found.warnings.push(format!(
                    "warning: scope \"{}\": no such cgroup under {} yet; it is attached when it appears{}",
                    path.display(),
                    root.display(),
                    near.unwrap_or_default()
                ));
            }
        }
    }
    Ok(found)
}

/// Checks one unit scope; the error has no position yet.
fn check_unit(name: &str) -> Result<(), PolicyError> {
    if !super::is_running() {
        return Err(PolicyError::new(format!(
            "scope \"{name}\" is a systemd unit, but systemd is not the service manager here (PID 1 is not systemd: no /run/systemd/system)"
        ))
        .hint("use a cgroup path scope such as \"system.slice/xeams.service\", or \"host\""));
    }
    if is_template(name) {
        // A template is never loaded itself; its unit file must exist.
        let files = list(&["list-unit-files", "--no-legend", "--full", name]);
        if files.iter().any(|f| f == name) {
            return Ok(());
        }
        return Err(unknown(name));
    }
    let props = show(name);
    match props.get("LoadState").map(String::as_str) {
        Some("loaded") => {}
        Some("masked") => {
            return Err(PolicyError::new(format!(
                "scope \"{name}\": the unit is masked, it never starts"
            ))
            .hint(format!(
                "unmask it (systemctl unmask {name}) or remove it from scope"
            )));
        }
        _ => return Err(unknown(name)),
    }
    let sockets: Vec<&str> = props
        .get("TriggeredBy")
        .map(String::as_str)
        .unwrap_or_default()
        .split_whitespace()
        .filter(|u| u.ends_with(".socket"))
        .collect();
    if !sockets.is_empty() {
        let list = sockets.join(", ");
        return Err(PolicyError::new(format!(
            "scope \"{name}\" is started by socket activation ({list}): systemd (PID 1) owns the listening socket, so the connections it accepts belong to PID 1's cgroup and the unit's programs never judge them"
        ))
        .hint(format!(
            "run it without socket activation (systemctl disable --now {list}; systemctl enable --now {name}) so that its own process listens, or enforce inbound with scope = [\"host\"]"
        )));
    }
    if runs_nothing(&props) {
        let workers = workers(&props);
        let exec = exec_paths(props.get("ExecStart").map_or("", String::as_str)).join(" ");
        let hint = if workers.is_empty() {
            "protect the unit that runs the daemon (systemctl status shows which cgroup its processes are in)".to_owned()
        } else {
            let quoted: Vec<String> = workers.iter().map(|w| format!("\"{w}\"")).collect();
            let templates: Vec<String> = workers
                .iter()
                .filter_map(|w| {
                    let (prefix, _) = w.split_once('@')?;
                    Some(format!("\"{prefix}@.service\""))
                })
                .collect();
            let mut hint = format!(
                "the work is done by {}: write scope = [{}]",
                workers.join(", "),
                quoted.join(", ")
            );
            if !templates.is_empty() {
                hint.push_str(&format!(
                    ", or scope = [{}] for every instance",
                    templates.join(", ")
                ));
            }
            hint
        };
        return Err(PolicyError::new(format!(
            "scope \"{name}\" protects nothing: it is a oneshot that runs no process (ExecStart={})",
            if exec.is_empty() { "none" } else { &exec }
        ))
        .hint(hint));
    }
    Ok(())
}

/// A unit systemd does not know, with the nearest known service.
fn unknown(name: &str) -> PolicyError {
    let known = known_services();
    let hint = match nearest(name, &known) {
        Some(near) => format!("did you mean \"{near}\"? (systemctl list-units --type=service lists the loaded units)"),
        None => "install the unit first, or check the name with systemctl list-unit-files --type=service".to_owned(),
    };
    PolicyError::new(format!(
        "scope \"{name}\": systemd knows no unit of that name"
    ))
    .hint(hint)
}

/// Places an error about unit `name` on the config line that names it.
fn place(mut err: PolicyError, config: Option<&Path>, name: &str) -> PolicyError {
    let Some(file) = config else { return err };
    err.file = Some(file.to_path_buf());
    if let Ok(text) = std::fs::read_to_string(file) {
        let quoted = format!("\"{name}\"");
        if let Some(i) = text.lines().position(|l| l.contains(&quoted)) {
            err.line = Some(i + 1);
        }
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSTFIX: &str = "Id=postfix.service\nLoadState=loaded\nActiveState=active\nType=oneshot\n\
        ExecStart={ path=/bin/true ; argv[]=/bin/true ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }\n\
        ConsistsOf=postfix@-.service\nWants=postfix@-.service\nControlGroup=\n";

    #[test]
    fn a_oneshot_running_true_runs_nothing_and_a_daemon_does() {
        let props = parse_show(POSTFIX);
        assert_eq!(exec_paths(&props["ExecStart"]), ["/bin/true"]);
        assert!(runs_nothing(&props));
        let daemon = parse_show(
            "Type=forking\nExecStart={ path=/usr/sbin/postmulti ; argv[]=/usr/sbin/postmulti -i - -p start ; }\n",
        );
        assert!(!runs_nothing(&daemon));
        let oneshot_script =
            parse_show("Type=oneshot\nExecStart={ path=/usr/local/bin/sync-mail ; argv[]=x }\n");
        assert!(!runs_nothing(&oneshot_script));
    }

    #[test]
    fn templates_are_told_from_instances() {
        assert!(is_template("postfix@.service"));
        assert!(!is_template("postfix@-.service"));
        assert!(!is_template("postfix.service"));
    }

    #[test]
    fn did_you_mean_finds_typos_and_the_instance_of_a_stem() {
        let known = vec![
            "cron.service".to_owned(),
            "postfix.service".to_owned(),
            "postfix@-.service".to_owned(),
        ];
        assert_eq!(nearest("postfix.servce", &known), Some("postfix.service"));
        assert_eq!(nearest("postfix", &known), Some("postfix.service"));
        assert_eq!(nearest("xeams.service", &known), None);
    }
}
