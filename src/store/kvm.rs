//! The remembered KVM failure of this host.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};

/// A KVM failure as the state database keeps it (see
/// [`crate::vm::accel::KvmFailure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmFailureRow {
    pub reason: String,
    pub fingerprint: String,
    pub at_unix: i64,
}

impl Store {
    /// Remembers that KVM failed a job's boot on this host (replaces an
    /// earlier record).
    pub fn record_kvm_failure(&self, f: &KvmFailureRow) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT OR REPLACE INTO kvm_failure (id, reason, fingerprint, at_unix) VALUES (1, ?1, ?2, ?3)",
        )
        .and_then(|mut st| st.execute(params![f.reason, f.fingerprint, f.at_unix]))
        .map_err(self.err("record a KVM failure"))?;
        Ok(())
    }

    /// The KVM failure recorded by [`Store::record_kvm_failure`], if any.
    pub fn kvm_failure(&self) -> Result<Option<KvmFailureRow>, StoreError> {
        let conn = self.conn();
        conn.prepare_cached("SELECT reason, fingerprint, at_unix FROM kvm_failure WHERE id = 1")
            .and_then(|mut st| {
                st.query_row([], |r| {
                    Ok(KvmFailureRow {
                        reason: r.get(0)?,
                        fingerprint: r.get(1)?,
                        at_unix: r.get(2)?,
                    })
                })
                .optional()
            })
            .map_err(self.err("read the KVM failure record"))
    }

    /// Forgets the KVM failure record; returns whether there was one.
    pub fn forget_kvm_failure(&self) -> Result<bool, StoreError> {
        let conn = self.conn();
        conn.prepare_cached("DELETE FROM kvm_failure")
            .and_then(|mut st| st.execute([]))
            .map(|n| n > 0)
            .map_err(self.err("forget the KVM failure record"))
    }
}
