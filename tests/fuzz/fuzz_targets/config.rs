//! Fuzzes the configuration front end: profile and site TOML through the parsers and
//! the compiler, then the map image of whatever compiles.
//!
//! The input is a site config, optionally followed by a line `#--- profile` and a
//! profile (the site then names it with `profile = "profile.toml"`, which is resolved
//! to the fuzzed text here instead of a file). Properties checked besides "no panic":
//! every error carries a message and stays a message (no multi-kilobyte dumps), errors
//! placed in a file have a line within it, compiling is deterministic, and a compiled
//! policy either builds a map image or is refused with an error (never a panic).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portcullis::{
    config::{PolicyError, profile::Profile, site::Site},
    policy::{
        compiler,
        image::{Image, RuleIndex},
    },
};

const SPLIT: &str = "\n#--- profile\n";

fn check_error(e: &PolicyError, text: &str) {
    assert!(!e.message.is_empty(), "an error without a message");
    if let Some(line) = e.line {
        assert!(
            line >= 1 && line <= text.lines().count().max(1) + 1,
            "line {line} outside the file: {e}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (site_text, profile_text) = match text.split_once(SPLIT) {
        Some((s, p)) => (s, Some(p)),
        None => (text, None),
    };
    let site = match Site::parse(site_text, Path::new("site.toml")) {
        Ok(s) => s,
        Err(e) => return check_error(&e, site_text),
    };
    let compiled = match profile_text {
        Some(p) => match Profile::parse(p, Path::new("profile.toml")) {
            Ok(profile) => compiler::compile(&profile, &site, Some(Path::new("site.toml"))),
            Err(e) => return check_error(&e, p),
        },
        // Built-in products only: a profile path in the site would read a file.
        None if site.profile.is_some() => return,
        None => compiler::compile_site(&site, Some(Path::new("site.toml"))),
    };
    let policy = match compiled {
        Ok(p) => p,
        Err(e) => return check_error(&e, profile_text.unwrap_or(site_text)),
    };
    let again = match profile_text {
        Some(p) => compiler::compile(
            &Profile::parse(p, Path::new("profile.toml")).expect("parsed once"),
            &site,
            None,
        ),
        None => compiler::compile_site(&site, None),
    };
    assert_eq!(
        again.as_ref().ok(),
        Some(&policy),
        "compiling is not deterministic"
    );
    if let Ok(index) = RuleIndex::fresh(&policy) {
        let _ = Image::build(&policy, &index, 0, &Default::default());
    }
});
