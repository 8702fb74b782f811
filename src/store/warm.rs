//! Warm guests (see `crate::warm`): one row per guest of a warm pool or
//! snapshot template, written before its directory exists and removed once
//! it is destroyed or handed to a job (the job's own `vms` row takes over),
//! so that `solstice status` shows the pools and the next start after a
//! crash kills what was left.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::params;

use super::{Store, StoreError, from_ms, to_ms};

/// What a warm guest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmKind {
    /// A pool guest that was booted.
    Booted,
    /// A pool guest restored from a template.
    Restored,
    /// The guest a template is being saved from.
    Template,
}

impl WarmKind {
    /// How the database, `solstice status` and its JSON name it.
    pub fn as_str(self) -> &'static str {
        match self {
            WarmKind::Booted => "booted",
            WarmKind::Restored => "restored",
            WarmKind::Template => "template",
        }
    }

    fn parse(s: &str) -> Option<WarmKind> {
        match s {
            "booted" => Some(WarmKind::Booted),
            "restored" => Some(WarmKind::Restored),
            "template" => Some(WarmKind::Template),
            _ => None,
        }
    }
}

impl std::fmt::Display for WarmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A warm guest's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmRow {
    /// Names its directory under `<state_dir>/warm/`.
    pub id: String,
    pub image: String,
    pub kind: WarmKind,
    pub dir: PathBuf,
    pub pid: Option<u32>,
    pub ssh_port: Option<u16>,
    /// SSH-ready and waiting for a job (false while it starts).
    pub ready: bool,
    pub recorded_at: SystemTime,
}

impl Store {
    /// Records a warm guest before its directory is created (not ready, no
    /// pid). Recording an id again replaces the row (and clears pid, port
    /// and readiness).
    pub fn record_warm(
        &self,
        id: &str,
        image: &str,
        kind: WarmKind,
        dir: &Path,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO warm_vms (id, image, kind, dir, recorded_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(id) DO UPDATE SET image = excluded.image, kind = excluded.kind,
                 dir = excluded.dir, pid = NULL, ssh_port = NULL, ready = 0,
                 recorded_at_ms = excluded.recorded_at_ms",
        )
        .and_then(|mut st| {
            st.execute(params![
                id,
                image,
                kind.as_str(),
                dir.as_os_str().as_bytes(),
                to_ms(SystemTime::now())
            ])
        })
        .map_err(self.err("record a warm guest"))?;
        Ok(())
    }

    /// Records a warm guest's QEMU once it is spawned
    /// ([`StoreError::UnknownWarm`] for an id not recorded).
    pub fn record_warm_process(&self, id: &str, pid: u32, ssh_port: u16) -> Result<(), StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached("UPDATE warm_vms SET pid = ?2, ssh_port = ?3 WHERE id = ?1")
            .and_then(|mut st| st.execute(params![id, pid, ssh_port]))
            .map_err(self.err("record a warm guest's process"))?;
        if n == 0 {
            return Err(StoreError::UnknownWarm { id: id.to_string() });
        }
        Ok(())
    }

    /// Marks a warm guest SSH-ready ([`StoreError::UnknownWarm`] for an id
    /// not recorded).
    pub fn set_warm_ready(&self, id: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached("UPDATE warm_vms SET ready = 1 WHERE id = ?1")
            .and_then(|mut st| st.execute([id]))
            .map_err(self.err("mark a warm guest ready"))?;
        if n == 0 {
            return Err(StoreError::UnknownWarm { id: id.to_string() });
        }
        Ok(())
    }

    /// Forgets a warm guest (destroyed, or handed to a job). Unknown ids are fine.
    pub fn forget_warm(&self, id: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.prepare_cached("DELETE FROM warm_vms WHERE id = ?1")
            .and_then(|mut st| st.execute([id]))
            .map_err(self.err("forget a warm guest"))?;
        Ok(())
    }

    /// Forgets every warm guest and returns how many there were: at
    /// start-up, once [`super::reconcile_warm`] has killed them (nothing
    /// warm survives a restart).
    pub fn clear_warm(&self) -> Result<usize, StoreError> {
        let conn = self.conn();
        conn.prepare_cached("DELETE FROM warm_vms")
            .and_then(|mut st| st.execute([]))
            .map_err(self.err("forget the warm guests"))
    }

    /// Every recorded warm guest, oldest first.
    pub fn warm_rows(&self) -> Result<Vec<WarmRow>, StoreError> {
        let conn = self.conn();
        let raw = conn
            .prepare_cached(
                "SELECT id, image, kind, dir, pid, ssh_port, ready, recorded_at_ms FROM warm_vms
                 ORDER BY recorded_at_ms, id",
            )
            .and_then(|mut st| {
                st.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, i64>(7)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(self.err("list warm guests"))?;
        drop(conn);
        raw.into_iter()
            .map(|(id, image, kind, dir, pid, port, ready, at)| {
                let kind = WarmKind::parse(&kind)
                    .ok_or_else(|| self.bad(format!("kind {kind:?} of warm guest {id}")))?;
                let pid = pid
                    .map(|p| {
                        u32::try_from(p)
                            .map_err(|_| self.bad(format!("pid {p} of warm guest {id}")))
                    })
                    .transpose()?;
                let ssh_port = port
                    .map(|p| {
                        u16::try_from(p)
                            .map_err(|_| self.bad(format!("port {p} of warm guest {id}")))
                    })
                    .transpose()?;
                Ok(WarmRow {
                    id,
                    image,
                    kind,
                    dir: PathBuf::from(OsStr::from_bytes(&dir)),
                    pid,
                    ssh_port,
                    ready: ready != 0,
                    recorded_at: from_ms(at),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in [WarmKind::Booted, WarmKind::Restored, WarmKind::Template] {
            assert_eq!(WarmKind::parse(k.as_str()), Some(k));
            assert_eq!(k.to_string(), k.as_str());
        }
        assert_eq!(WarmKind::parse("cold"), None);
    }

    #[test]
    fn warm_guests_are_recorded_updated_listed_and_forgotten() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("solstice.db")).unwrap();
        assert!(store.warm_rows().unwrap().is_empty());
        let dir1 = tmp.path().join("warm/w-tiny-00000001");
        let dir2 = tmp.path().join("warm/t-debian-00000002");
        store
            .record_warm("w-tiny-00000001", "tiny", WarmKind::Booted, &dir1)
            .unwrap();
        // Oldest first (ties go by id, and "t-" sorts before "w-").
        std::thread::sleep(std::time::Duration::from_millis(5));
        store
            .record_warm("t-debian-00000002", "debian", WarmKind::Template, &dir2)
            .unwrap();
        let rows = store.warm_rows().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "w-tiny-00000001");
        assert_eq!(rows[0].image, "tiny");
        assert_eq!(rows[0].kind, WarmKind::Booted);
        assert_eq!(rows[0].dir, dir1);
        assert_eq!(
            (rows[0].pid, rows[0].ssh_port, rows[0].ready),
            (None, None, false)
        );
        assert_eq!(rows[1].kind, WarmKind::Template);

        store
            .record_warm_process("w-tiny-00000001", 4242, 2222)
            .unwrap();
        store.set_warm_ready("w-tiny-00000001").unwrap();
        let row = &store.warm_rows().unwrap()[0];
        assert_eq!(
            (row.pid, row.ssh_port, row.ready),
            (Some(4242), Some(2222), true)
        );

        // Unknown ids: updates are refused, forgetting is fine.
        assert!(matches!(
            store.record_warm_process("w-none", 1, 2),
            Err(StoreError::UnknownWarm { id }) if id == "w-none"
        ));
        assert!(matches!(
            store.set_warm_ready("w-none"),
            Err(StoreError::UnknownWarm { .. })
        ));
        store.forget_warm("w-none").unwrap();

        // Recording again replaces the row and clears what came later.
        store
            .record_warm("w-tiny-00000001", "tiny", WarmKind::Restored, &dir1)
            .unwrap();
        let row = store
            .warm_rows()
            .unwrap()
            .into_iter()
            .find(|r| r.id == "w-tiny-00000001")
            .unwrap();
        assert_eq!(row.kind, WarmKind::Restored);
        assert_eq!((row.pid, row.ssh_port, row.ready), (None, None, false));

        // A reader sees them; it cannot change them.
        let reader = Store::open_read_only(&tmp.path().join("solstice.db")).unwrap();
        assert_eq!(reader.warm_rows().unwrap().len(), 2);
        assert!(reader.clear_warm().is_err());

        store.forget_warm("t-debian-00000002").unwrap();
        assert_eq!(store.warm_rows().unwrap().len(), 1);
        assert_eq!(store.clear_warm().unwrap(), 1);
        assert_eq!(store.clear_warm().unwrap(), 0);
        assert!(reader.warm_rows().unwrap().is_empty());
    }

    #[test]
    fn a_stored_value_this_binary_does_not_know_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("solstice.db");
        let store = Store::open(&path).unwrap();
        store
            .record_warm("w-a-1", "a", WarmKind::Booted, Path::new("/s/warm/w-a-1"))
            .unwrap();
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute("UPDATE warm_vms SET kind = 'frozen'", [])
            .unwrap();
        let e = store.warm_rows().unwrap_err();
        assert!(matches!(e, StoreError::BadValue { .. }), "{e}");
        assert!(e.to_string().contains("frozen"), "{e}");
    }
}
