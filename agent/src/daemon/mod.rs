//! The agent as a long-running service (`portcullis run`): settings resolved once into
//! typed values ([`settings`]), policy install for start and reload ([`install`]), the
//! run loop ([`run`]: events, reload, re-attachment, stop), what wakes re-attachment
//! ([`watch`]), the metrics endpoint ([`http`]) and the service manager's notifications
//! ([`notify`]), and the wait of an agent whose config names no product yet
//! ([`waiting`]).

pub mod http;
pub mod install;
pub mod notify;
pub mod run;
pub mod settings;
pub mod waiting;
pub mod watch;
