//! What wakes the re-attachment of cgroup-path scopes: inotify on each scope's parent
//! cgroup. A unit restart removes its cgroup and creates it again, and the kernel drops
//! the programs with the old one; the directory events come the moment that happens, so
//! the daemon re-attaches within milliseconds instead of at the next poll. (Unit scopes
//! need none of this: their drop-in attaches each new cgroup before the unit runs.)
//!
//! The window that remains for a cgroup path: between systemd's mkdir of the new cgroup,
//! which moves the unit's first process in right away, and the daemon's attach after the
//! event. [`SAFETY_NET`] re-checks in case an event is lost (the parent itself removed
//! and created again, or the inotify queue overflowing).

use std::{future, time::Duration};

use futures_util::StreamExt as _;
use inotify::{EventStream, Inotify, WatchMask};

use crate::{datapath::attach::Scope, model::ScopeTarget};

/// How often the scopes are checked even without an event.
pub const SAFETY_NET: Duration = Duration::from_secs(30);

/// The inotify watches on the parents of the cgroup-path scopes.
pub struct ScopeWatch {
    stream: Option<EventStream<Vec<u8>>>,
}

impl ScopeWatch {
    /// Watches the parent of every cgroup-path scope (host and unit scopes need none).
    /// A watch that cannot be set is logged; the safety net still covers its scope.
    pub fn new<'a>(scopes: impl Iterator<Item = &'a Scope>) -> Self {
        let parents: Vec<_> = scopes
            .filter(|s| matches!(s.target, ScopeTarget::Cgroup(_)))
            .filter_map(|s| s.path.parent().map(ToOwned::to_owned))
            .collect();
        if parents.is_empty() {
            return Self { stream: None };
        }
        let stream = Inotify::init().and_then(|inotify| {
            for parent in &parents {
                if let Err(e) = inotify.watches().add(
                    parent,
                    WatchMask::CREATE | WatchMask::DELETE | WatchMask::ONLYDIR,
                ) {
                    log::warn!(
                        "watching cgroup {} for re-created scopes: {e} (re-checked every {}s)",
                        parent.display(),
                        SAFETY_NET.as_secs()
                    );
                }
            }
            inotify.into_event_stream(vec![0u8; 4096])
        });
        match stream {
            Ok(stream) => Self {
                stream: Some(stream),
            },
            Err(e) => {
                log::warn!(
                    "inotify: {e}; re-created scopes are re-checked every {}s",
                    SAFETY_NET.as_secs()
                );
                Self { stream: None }
            }
        }
    }

    /// Resolves when a directory appeared in or vanished from a watched parent; never
    /// when nothing is watched.
    pub async fn changed(&mut self) {
        let Some(stream) = &mut self.stream else {
            return future::pending().await;
        };
        match stream.next().await {
            Some(Ok(_)) => {}
            Some(Err(e)) => log::warn!("inotify: {e}"),
            None => self.stream = None,
        }
    }
}
