//! Placeholder: the policy compiler.

/// A policy that does not validate.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);
