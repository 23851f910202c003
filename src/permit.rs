//! The writer permit: whether this daemon may write to its database now. The store's writer
//! lock grants it while the lock is held and revokes it the moment the lock is lost (on
//! Postgres, when the lock's session ends and another process may take the lock); `app`
//! hands it to the scheduler, the webhook sinks and retention, which check it before each unit
//! of work, and to [`crate::health`], which reports a revoked permit on `/readyz`.
//!
//! A leaf: it imports nothing from the crate, so everything that writes can depend on it. It
//! decides nothing; it only carries the lock keeper's answer to those who must obey it.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Whether this process may write, and if not, why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriterState {
    /// The writer lock is held (or no lock is needed): write.
    Held,
    /// The lock is lost; the text says why and who holds it, for `/readyz` and the logs.
    Lost(String),
}

/// A read-only view of the writer state, cheap to clone. Every loop that writes holds one.
#[derive(Clone, Debug)]
pub struct WriterPermit(watch::Receiver<WriterState>);

/// The side that grants and revokes the permit: the lock keeper.
#[derive(Debug)]
pub struct PermitGrantor(watch::Sender<WriterState>);

impl WriterPermit {
    /// A permit that is never revoked: SQLite (whose OS file lock cannot be lost while the
    /// process lives), or a daemon that takes no lock.
    pub fn always() -> Self {
        Self(watch::channel(WriterState::Held).1)
    }

    /// True while this process may write.
    pub fn is_held(&self) -> bool {
        *self.0.borrow() == WriterState::Held
    }

    /// Why this process may not write now; `None` while it may.
    pub fn why_not(&self) -> Option<String> {
        match &*self.0.borrow() {
            WriterState::Held => None,
            WriterState::Lost(why) => Some(why.clone()),
        }
    }

    /// Returns at once while the permit is held; otherwise waits until it is granted again.
    /// False when `cancel` fires first.
    pub async fn wait_held(&self, cancel: &CancellationToken) -> bool {
        if self.is_held() {
            return true;
        }
        let mut rx = self.0.clone();
        tokio::select! {
            granted = rx.wait_for(|s| *s == WriterState::Held) => granted.is_ok(),
            () = cancel.cancelled() => false,
        }
    }

    /// Resolves when the permit is revoked (never, for one that cannot be).
    pub async fn revoked(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|s| *s != WriterState::Held).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl From<watch::Receiver<WriterState>> for WriterPermit {
    fn from(rx: watch::Receiver<WriterState>) -> Self {
        Self(rx)
    }
}

impl PermitGrantor {
    /// A grantor whose permit starts held.
    pub fn new() -> Self {
        Self(watch::channel(WriterState::Held).0)
    }

    /// A permit that follows this grantor.
    pub fn permit(&self) -> WriterPermit {
        WriterPermit(self.0.subscribe())
    }

    /// The lock is held again.
    pub fn grant(&self) {
        self.0.send_if_modified(|s| {
            let changed = *s != WriterState::Held;
            *s = WriterState::Held;
            changed
        });
    }

    /// The lock is lost: every holder of the permit pauses. `why` replaces an earlier reason.
    pub fn revoke(&self, why: String) {
        self.0.send_if_modified(|s| {
            let next = WriterState::Lost(why);
            let changed = *s != next;
            *s = next;
            changed
        });
    }
}

impl Default for PermitGrantor {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_revoked_permit_waits_until_it_is_granted_again() {
        let grantor = PermitGrantor::new();
        let permit = grantor.permit();
        let cancel = CancellationToken::new();
        assert!(permit.wait_held(&cancel).await);
        grantor.revoke("lost".into());
        assert_eq!(permit.why_not().as_deref(), Some("lost"));
        permit.revoked().await;
        let waiting = tokio::spawn({
            let permit = permit.clone();
            let cancel = cancel.clone();
            async move { permit.wait_held(&cancel).await }
        });
        grantor.grant();
        assert!(waiting.await.unwrap());
        assert!(permit.is_held());
        grantor.revoke("again".into());
        cancel.cancel();
        assert!(!permit.wait_held(&cancel).await, "cancelled while revoked");
    }

    #[test]
    fn always_is_held() {
        assert!(WriterPermit::always().is_held());
    }
}
