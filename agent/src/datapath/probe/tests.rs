use super::{host::parse_lockdown, *};

#[test]
fn release_strings_of_distribution_kernels_parse() {
    let cases = [
        ("5.10.0-46-amd64", Some((5, 10, 0))),
        ("6.1.0-47-cloud-amd64", Some((6, 1, 0))),
        ("6.12.48+deb13-amd64", Some((6, 12, 48))),
        ("5.14.0-427.13.1.el9_4.x86_64", Some((5, 14, 0))),
        ("6.8.0-45-generic", Some((6, 8, 0))),
        ("6.18", Some((6, 18, 0))),
        ("unknown", None),
    ];
    for (release, want) in cases {
        let k = KernelRelease::parse(release);
        assert_eq!(k.version, want, "{release}");
        assert_eq!(k.release, release);
    }
}

#[test]
fn lockdown_is_the_bracketed_mode() {
    assert_eq!(
        parse_lockdown("[none] integrity confidentiality\n"),
        Some("none")
    );
    assert_eq!(
        parse_lockdown("none integrity [confidentiality]\n"),
        Some("confidentiality")
    );
    assert_eq!(parse_lockdown("none integrity\n"), None);
}

fn features(missing: &[(&str, Need)]) -> KernelFeatures {
    KernelFeatures {
        kernel: KernelRelease::parse("5.10.0-46-amd64"),
        features: missing
            .iter()
            .map(|(name, need)| Feature {
                name: (*name).into(),
                label: (*name).into(),
                status: Status::Missing,
                detail: String::new(),
                need: *need,
                since: Some("5.17"),
                breaks: "what breaks",
                fix: "the fix",
            })
            .collect(),
        programs: Vec::new(),
    }
}

#[test]
fn a_missing_feature_refuses_only_the_policies_that_need_it() {
    let k = features(&[("helper:example/xdp", Need::Xdp)]);
    assert_eq!(
        k.refusal(&Needs {
            names: true,
            units: true,
            ..Needs::default()
        }),
        None
    );
    let xdp = Needs {
        xdp: true,
        ..Needs::default()
    };
    let why = k.refusal(&xdp).expect("refused");
    assert!(
        why.starts_with("xdp needs helper:example/xdp (kernel 5.17+); here: "),
        "{why}"
    );
    assert!(why.contains("(kernel 5.10.0-46-amd64)"), "{why}");
    assert!(why.contains("the fix"), "{why}");
    assert!(why.contains("`portcullis doctor`"), "{why}");
}

#[test]
fn always_needed_features_refuse_every_policy_and_info_none() {
    let k = features(&[("btf", Need::Always), ("lockdown", Need::Info)]);
    let why = k.refusal(&Needs::default()).expect("refused");
    assert!(why.starts_with("portcullis needs btf"), "{why}");
    assert!(!why.contains("lockdown"), "{why}");
}

#[test]
fn unknown_probes_refuse_nothing_but_are_not_all_known() {
    let mut k = features(&[("bpf", Need::Always)]);
    k.features[0].status = Status::Unknown;
    assert_eq!(k.refusal(&Needs::default()), None);
    assert!(!k.all_known(&Needs::default()));
}

#[test]
fn a_refused_program_refuses_the_policies_that_load_it() {
    let mut k = features(&[]);
    k.programs.push(ProgramCheck {
        name: "pc_xdp",
        status: Status::Missing,
        need: Need::Xdp,
        verified_instructions: None,
        load_ms: Some(3),
        detail: Some("invalid mem access".into()),
    });
    assert_eq!(k.refusal(&Needs::default()), None);
    let why = k
        .refusal(&Needs {
            xdp: true,
            ..Needs::default()
        })
        .expect("refused");
    assert!(why.contains("refuses program pc_xdp"), "{why}");
}
