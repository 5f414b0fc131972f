//! Placeholder: product profiles.
