//! Placeholder: site config.
