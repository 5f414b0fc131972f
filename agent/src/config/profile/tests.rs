//! Unit tests of `profile`.
use super::*;

#[test]
fn every_builtin_profile_parses_and_is_named_after_its_file() {
    for profile in builtin().unwrap() {
        assert_eq!(
            profile.file,
            PathBuf::from(format!("profiles/{}.toml", profile.slug.get_ref()))
        );
        assert!(
            !profile.rules.is_empty(),
            "{} has no rules",
            profile.slug.get_ref()
        );
        for rule in &profile.rules {
            let source = rule.source.as_deref().unwrap();
            assert!(
                source.contains(&profile.source) || source.starts_with("portcullis addition"),
                "rule {} of {}: source {source:?} does not name {}",
                rule.id.get_ref(),
                profile.slug.get_ref(),
                profile.source
            );
        }
    }
}

#[test]
fn every_declared_feature_is_used() {
    for profile in builtin().unwrap() {
        for f in &profile.features {
            assert!(
                profile
                    .rules
                    .iter()
                    .any(|r| r.feature.as_ref().map(|x| x.get_ref()) == Some(f.name.get_ref())),
                "{}: feature {} is declared but no rule uses it",
                profile.slug.get_ref(),
                f.name.get_ref()
            );
        }
    }
}

#[test]
fn every_vendor_group_is_used_and_sourced() {
    for profile in builtin().unwrap() {
        let used = profile.peer_groups();
        for g in &profile.vendor_groups {
            assert!(
                used.contains(g.name.get_ref()),
                "{}: peer group {} is declared but no rule uses it",
                profile.slug.get_ref(),
                g.name.get_ref()
            );
            assert!(g.source.contains(&profile.source), "{}", g.name.get_ref());
        }
    }
}

#[test]
fn bad_vendor_groups_are_errors_at_their_line() {
    let head = "slug = \"t\"\nproduct = \"t\"\nvendor = \"t\"\nsource = \"s\"\n";
    for (group, needle) in [
        (
            "name = \"u\"\npeers = [\n\"a.example\",\n\"bad_name.example\"]\nwhy = \"w\"\nsource = \"s\"",
            "character '_'",
        ),
        (
            "name = \"u\"\npeers = []\nwhy = \"w\"\nsource = \"s\"",
            "has no peers",
        ),
        (
            "name = \"loopback\"\npeers = [\"a.example\"]\nwhy = \"w\"\nsource = \"s\"",
            "built in",
        ),
        (
            "name = \"u\"\npeers = [\"a.example\"]\nwhy = \"\"\nsource = \"s\"",
            "needs a \"why\"",
        ),
        (
            "name = \"U\"\npeers = [\"a.example\"]\nwhy = \"w\"\nsource = \"s\"",
            "not a valid name",
        ),
    ] {
        let text = format!("{head}[[peer_group]]\n{group}\n");
        let err = Profile::parse(&text, Path::new("p.toml")).unwrap_err();
        assert!(err.message.contains(needle), "{group}: {err}");
        assert!(err.line.is_some_and(|l| l >= 6), "{group}: {err}");
        assert!(err.hint.is_some(), "{group}");
    }
    let text = format!(
        "{head}[[peer_group]]\nname = \"u\"\npeers = [\"a.example\"]\nwhy = \"w\"\nsource = \"s\"\n[[peer_group]]\nname = \"u\"\npeers = [\"b.example\"]\nwhy = \"w\"\nsource = \"s\"\n"
    );
    let err = Profile::parse(&text, Path::new("p.toml")).unwrap_err();
    assert!(err.message.contains("duplicate peer group"), "{err}");
    assert_eq!(err.line, Some(11));
    let line_of_bad_name = Profile::parse(
        &format!("{head}[[peer_group]]\nname = \"u\"\npeers = [\n\"a.example\",\n\"-x.example\"]\nwhy = \"w\"\nsource = \"s\"\n"),
        Path::new("p.toml"),
    )
    .unwrap_err();
    assert_eq!(line_of_bad_name.line, Some(9), "{line_of_bad_name}");
}

#[test]
fn ports_accept_numbers_ranges_and_lists() {
    #[derive(Debug, Deserialize)]
    struct T {
        p: Ports,
    }
    let parse = |v: &str| toml::from_str::<T>(&format!("p = {v}")).map(|t| t.p.0);
    assert_eq!(parse("25").unwrap(), vec![(25, 25)]);
    assert_eq!(parse("\"6000-6010\"").unwrap(), vec![(6000, 6010)]);
    assert_eq!(
        parse("[80, \"443\", \"1-2\"]").unwrap(),
        vec![(80, 80), (443, 443), (1, 2)]
    );
    let text = "p = [\n 80,\n 70000]";
    let err = PolicyError::from_toml(
        Path::new("t.toml"),
        text,
        &toml::from_str::<T>(text).unwrap_err(),
    );
    assert_eq!(
        (err.line, err.column),
        (Some(3), Some(2)),
        "an element's error is at the element: {err}"
    );
    assert_eq!(err.message, "port 70000 is above 65535");
    assert!(parse("0").is_err());
    assert!(parse("70000").is_err());
    assert!(parse("\"9-1\"").is_err());
    assert!(parse("[]").is_err());
    assert!(parse("\"http\"").is_err());
}

#[test]
fn names() {
    assert!(valid_name("smtp-in"));
    assert!(valid_name("0day.v2_x"));
    assert!(!valid_name("Smtp"));
    assert!(!valid_name("a/in"));
    assert!(!valid_name("-x"));
    assert!(!valid_name(""));
}
