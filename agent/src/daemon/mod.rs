//! The agent as a long-running service (`portcullis run`): settings resolved once into
//! typed values, policy install and reload, scope re-attachment, the event loop, the
//! metrics endpoint and the service manager's notifications.

pub mod notify;
pub mod run;
