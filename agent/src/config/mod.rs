//! The configuration stage: what the operator and the vendor wrote. A product
//! [`profile`] (the vendor's port table, `profiles/*.toml`, embedded in the binary) and
//! the [`site`] config (`/etc/portcullis/portcullis.toml`) are parsed and validated here;
//! every problem is an [`error::PolicyError`] with file, line and hint. The compiler
//! (`crate::policy`) turns both into one policy.

pub mod error;
pub mod peers;
pub mod profile;
pub mod resolvers;
pub mod site;

use std::path::Path;

use error::read_config;
pub use error::{MAX_CONFIG_BYTES, PolicyError};
pub use site::Site;

/// Reads and validates a site config. The only I/O is reading `path`.
pub fn load_site(path: &Path) -> Result<Site, PolicyError> {
    let text = read_config(
        path,
        "site config",
        "pass the path of an existing TOML file with --config",
    )?;
    Site::parse(&text, path)
}
