//! The configuration stage: what the operator and the vendor wrote. A product
//! [`profile`] (the vendor's port table, `profiles/*.toml`, embedded in the binary) and
//! the [`site`] config (`/etc/portcullis/portcullis.toml`) are parsed and validated here;
//! every problem is an [`error::PolicyError`] with file, line and hint. The compiler
//! (`crate::policy`) turns both into one policy.

pub mod base;
pub mod error;
pub mod peers;
pub mod profile;
pub mod resolvers;
pub mod site;

use std::path::Path;

use error::read_config;
pub use error::{MAX_CONFIG_BYTES, PolicyError};
pub use site::Site;

/// Reads and validates a site config, and reads what this host's own configuration
/// names for the base set (`base`). The only I/O is reading `path` and the host's
/// files under `/`.
pub fn load_site(path: &Path) -> Result<Site, PolicyError> {
    let text = read_config(
        path,
        "site config",
        "pass the path of an existing TOML file with --config",
    )?;
    let mut site = Site::parse(&text, path)?;
    site.read_host(Path::new("/"));
    Ok(site)
}
