//! A minimal ISO 9660 writer for seed images: one root directory holding a
//! few small files, with Rock Ridge (SUSP/RRIP) names and modes in the
//! primary tree and a Joliet supplementary tree, so that lower-case names
//! with hyphens (`meta-data`, `user-data`) read correctly on Linux `isofs`,
//! illumos `hsfs` and anything that only understands Joliet.
//!
//! Layout (2048-byte sectors):
//!
//! | sector | content |
//! |---|---|
//! | 0–15 | system area (zeros) |
//! | 16 | primary volume descriptor |
//! | 17 | Joliet supplementary volume descriptor |
//! | 18 | volume descriptor set terminator |
//! | 19, 20 | primary path tables (L, M) |
//! | 21, 22 | Joliet path tables (L, M) |
//! | 23 | primary root directory (with Rock Ridge entries) |
//! | 24 | Joliet root directory |
//! | 25… | file contents, each starting on a new sector |

use crate::civil::Civil;
use thiserror::Error;

/// Bytes per logical sector and block.
pub const SECTOR: usize = 2048;
const PVD_SECTOR: u32 = 16;
const SVD_SECTOR: u32 = 17;
const TERM_SECTOR: u32 = 18;
const PATH_L: u32 = 19;
const PATH_M: u32 = 20;
const JPATH_L: u32 = 21;
const JPATH_M: u32 = 22;
const ROOT: u32 = 23;
const JROOT: u32 = 24;
const FIRST_DATA: u32 = 25;
/// One path table record for the root: 8 bytes + 1-byte identifier + pad.
const PATH_TABLE_SIZE: u32 = 10;

/// Rock Ridge extension identifier announced in the `ER` entry.
const RR_ID: &[u8] = b"RRIP_1991A";
const RR_DES: &[u8] = b"ROCK RIDGE POSIX FILE SYSTEM SEMANTICS";
const RR_SRC: &[u8] = b"SEE IEEE P1282";

/// Why an ISO image could not be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IsoError {
    #[error("Seed file name {0:?} is not usable: use 1-64 characters of [A-Za-z0-9._-]")]
    BadName(String),
    #[error("Seed file names {0:?} and {1:?} collide in ISO 9660 8.3 form: rename one")]
    NameCollision(String, String),
    #[error("Too many seed files for one directory sector: keep the seed small")]
    DirectoryFull,
    #[error("Volume label {0:?} is too long: use at most 16 characters")]
    LabelTooLong(String),
}

/// One file in the image's root directory.
#[derive(Debug, Clone)]
pub struct IsoFile<'a> {
    /// Name as the guest should see it (Rock Ridge and Joliet), e.g. `meta-data`.
    pub name: &'a str,
    pub contents: &'a [u8],
}

/// Builds a complete ISO image in memory.
///
/// `label` is the volume identifier (`cidata` for NoCloud); `unix_time` is
/// stamped on the volume and on every directory record.
pub fn build(label: &str, files: &[IsoFile<'_>], unix_time: i64) -> Result<Vec<u8>, IsoError> {
    if label.len() > 16 || !label.is_ascii() {
        return Err(IsoError::LabelTooLong(label.to_string()));
    }
    let date = Civil::from_unix(unix_time);
    let date = Civil {
        year: date.year.clamp(1900, 2155),
        ..date
    };

    // Assign names and extents.
    struct Entry<'a> {
        primary: Vec<u8>,
        joliet: Vec<u8>,
        rr_name: &'a str,
        data: &'a [u8],
        extent: u32,
    }
    let mut entries = Vec::with_capacity(files.len());
    let mut next = FIRST_DATA;
    for f in files {
        let ok = !f.name.is_empty()
            && f.name.len() <= 64
            && f.name != "."
            && f.name != ".."
            && f.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if !ok {
            return Err(IsoError::BadName(f.name.to_string()));
        }
        entries.push(Entry {
            primary: primary_name(f.name),
            joliet: joliet_name(f.name),
            rr_name: f.name,
            data: f.contents,
            extent: next,
        });
        next += sectors_for(f.contents.len());
    }
    let total_sectors = next;
    for (i, a) in entries.iter().enumerate() {
        for b in &entries[i + 1..] {
            if a.primary == b.primary {
                return Err(IsoError::NameCollision(a.rr_name.into(), b.rr_name.into()));
            }
        }
    }

    // Primary root directory, records sorted by identifier.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| entries[a].primary.cmp(&entries[b].primary));
    let dir_mode = 0o040555;
    let mut root = Vec::with_capacity(SECTOR);
    let mut dot_su = Vec::new();
    dot_su.extend_from_slice(&[b'S', b'P', 7, 1, 0xBE, 0xEF, 0]);
    push_rr(&mut dot_su, 0x01);
    push_px(&mut dot_su, dir_mode, 2);
    push_er(&mut dot_su);
    root.extend(dir_record(ROOT, SECTOR as u32, true, &[0], &dot_su, &date));
    let mut dotdot_su = Vec::new();
    push_rr(&mut dotdot_su, 0x01);
    push_px(&mut dotdot_su, dir_mode, 2);
    root.extend(dir_record(
        ROOT,
        SECTOR as u32,
        true,
        &[1],
        &dotdot_su,
        &date,
    ));
    for &i in &order {
        let e = &entries[i];
        let mut su = Vec::new();
        push_rr(&mut su, 0x01 | 0x08);
        push_px(&mut su, 0o100444, 1);
        push_nm(&mut su, e.rr_name.as_bytes());
        root.extend(dir_record(
            e.extent,
            e.data.len() as u32,
            false,
            &e.primary,
            &su,
            &date,
        ));
    }
    if root.len() > SECTOR {
        return Err(IsoError::DirectoryFull);
    }

    // Joliet root directory.
    order.sort_by(|&a, &b| entries[a].joliet.cmp(&entries[b].joliet));
    let mut jroot = Vec::with_capacity(SECTOR);
    jroot.extend(dir_record(JROOT, SECTOR as u32, true, &[0], &[], &date));
    jroot.extend(dir_record(JROOT, SECTOR as u32, true, &[1], &[], &date));
    for &i in &order {
        let e = &entries[i];
        jroot.extend(dir_record(
            e.extent,
            e.data.len() as u32,
            false,
            &e.joliet,
            &[],
            &date,
        ));
    }
    if jroot.len() > SECTOR {
        return Err(IsoError::DirectoryFull);
    }

    let mut img = vec![0u8; total_sectors as usize * SECTOR];
    let at = |s: u32| s as usize * SECTOR;
    let pvd = volume_descriptor(false, label, total_sectors, &date);
    img[at(PVD_SECTOR)..at(PVD_SECTOR) + SECTOR].copy_from_slice(&pvd);
    let svd = volume_descriptor(true, label, total_sectors, &date);
    img[at(SVD_SECTOR)..at(SVD_SECTOR) + SECTOR].copy_from_slice(&svd);
    let t = at(TERM_SECTOR);
    img[t] = 255;
    img[t + 1..t + 6].copy_from_slice(b"CD001");
    img[t + 6] = 1;
    for (sector, dir, big_endian) in [
        (PATH_L, ROOT, false),
        (PATH_M, ROOT, true),
        (JPATH_L, JROOT, false),
        (JPATH_M, JROOT, true),
    ] {
        let p = at(sector);
        img[p] = 1; // length of directory identifier
        img[p + 1] = 0; // extended attribute record length
        let loc = if big_endian {
            dir.to_be_bytes()
        } else {
            dir.to_le_bytes()
        };
        img[p + 2..p + 6].copy_from_slice(&loc);
        let parent = if big_endian {
            1u16.to_be_bytes()
        } else {
            1u16.to_le_bytes()
        };
        img[p + 6..p + 8].copy_from_slice(&parent);
        img[p + 8] = 0; // root identifier
    }
    img[at(ROOT)..at(ROOT) + root.len()].copy_from_slice(&root);
    img[at(JROOT)..at(JROOT) + jroot.len()].copy_from_slice(&jroot);
    for e in &entries {
        let p = at(e.extent);
        img[p..p + e.data.len()].copy_from_slice(e.data);
    }
    Ok(img)
}

fn sectors_for(len: usize) -> u32 {
    len.div_ceil(SECTOR) as u32
}

/// ISO 9660 level 1 identifier: `NAME8.EXT;1` in d-characters.
pub fn primary_name(name: &str) -> Vec<u8> {
    let up = |s: &str, max: usize| -> String {
        s.chars()
            .map(|c| {
                let c = c.to_ascii_uppercase();
                if c.is_ascii_uppercase() || c.is_ascii_digit() {
                    c
                } else {
                    '_'
                }
            })
            .take(max)
            .collect()
    };
    let (base, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    format!("{}.{};1", up(base, 8), up(ext, 3)).into_bytes()
}

/// Joliet identifier: the name in UCS-2 big-endian, with version `;1`.
pub fn joliet_name(name: &str) -> Vec<u8> {
    name.encode_utf16()
        .chain(";1".encode_utf16())
        .flat_map(|u| u.to_be_bytes())
        .collect()
}

fn both16(v: u16) -> [u8; 4] {
    let l = v.to_le_bytes();
    let b = v.to_be_bytes();
    [l[0], l[1], b[0], b[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&v.to_le_bytes());
    out[4..].copy_from_slice(&v.to_be_bytes());
    out
}

fn push_rr(su: &mut Vec<u8>, flags: u8) {
    su.extend_from_slice(&[b'R', b'R', 5, 1, flags]);
}

fn push_px(su: &mut Vec<u8>, mode: u32, nlink: u32) {
    su.extend_from_slice(&[b'P', b'X', 36, 1]);
    su.extend_from_slice(&both32(mode));
    su.extend_from_slice(&both32(nlink));
    su.extend_from_slice(&both32(0)); // uid
    su.extend_from_slice(&both32(0)); // gid
}

fn push_nm(su: &mut Vec<u8>, name: &[u8]) {
    su.extend_from_slice(&[b'N', b'M', (5 + name.len()) as u8, 1, 0]);
    su.extend_from_slice(name);
}

fn push_er(su: &mut Vec<u8>) {
    let len = 8 + RR_ID.len() + RR_DES.len() + RR_SRC.len();
    su.extend_from_slice(&[
        b'E',
        b'R',
        len as u8,
        1,
        RR_ID.len() as u8,
        RR_DES.len() as u8,
        RR_SRC.len() as u8,
        1,
    ]);
    su.extend_from_slice(RR_ID);
    su.extend_from_slice(RR_DES);
    su.extend_from_slice(RR_SRC);
}

fn dir_record(
    extent: u32,
    size: u32,
    is_dir: bool,
    ident: &[u8],
    system_use: &[u8],
    date: &Civil,
) -> Vec<u8> {
    let pad = usize::from(ident.len() % 2 == 0);
    let mut len = 33 + ident.len() + pad + system_use.len();
    len += len % 2;
    let mut r = Vec::with_capacity(len);
    r.push(len as u8);
    r.push(0);
    r.extend_from_slice(&both32(extent));
    r.extend_from_slice(&both32(size));
    r.extend_from_slice(&date.record_date());
    r.push(if is_dir { 2 } else { 0 });
    r.push(0);
    r.push(0);
    r.extend_from_slice(&both16(1));
    r.push(ident.len() as u8);
    r.extend_from_slice(ident);
    r.resize(33 + ident.len() + pad, 0);
    r.extend_from_slice(system_use);
    r.resize(len, 0);
    r
}

fn text_field(dst: &mut [u8], text: &str, joliet: bool) {
    if joliet {
        for pair in dst.chunks_mut(2) {
            pair.copy_from_slice(&[0, b' '][..pair.len()]);
        }
        for (i, u) in text.encode_utf16().take(dst.len() / 2).enumerate() {
            dst[2 * i..2 * i + 2].copy_from_slice(&u.to_be_bytes());
        }
    } else {
        dst.fill(b' ');
        let n = text.len().min(dst.len());
        dst[..n].copy_from_slice(&text.as_bytes()[..n]);
    }
}

fn volume_descriptor(joliet: bool, label: &str, total_sectors: u32, date: &Civil) -> [u8; SECTOR] {
    let mut d = [0u8; SECTOR];
    d[0] = if joliet { 2 } else { 1 };
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    text_field(&mut d[8..40], "", joliet); // system identifier
    text_field(&mut d[40..72], label, joliet);
    d[80..88].copy_from_slice(&both32(total_sectors));
    if joliet {
        d[88..91].copy_from_slice(b"%/E"); // UCS-2 level 3
    }
    d[120..124].copy_from_slice(&both16(1)); // volume set size
    d[124..128].copy_from_slice(&both16(1)); // volume sequence number
    d[128..132].copy_from_slice(&both16(SECTOR as u16));
    d[132..140].copy_from_slice(&both32(PATH_TABLE_SIZE));
    let (l, m, root) = if joliet {
        (JPATH_L, JPATH_M, JROOT)
    } else {
        (PATH_L, PATH_M, ROOT)
    };
    d[140..144].copy_from_slice(&l.to_le_bytes());
    d[148..152].copy_from_slice(&m.to_be_bytes());
    let rec = dir_record(root, SECTOR as u32, true, &[0], &[], date);
    d[156..156 + rec.len()].copy_from_slice(&rec);
    text_field(&mut d[190..318], "", joliet); // volume set
    text_field(&mut d[318..446], "", joliet); // publisher
    text_field(&mut d[446..574], "", joliet); // data preparer
    text_field(&mut d[574..702], "SOLSTICE", joliet); // application
    text_field(&mut d[702..739], "", joliet); // copyright file
    text_field(&mut d[739..776], "", joliet); // abstract file
    text_field(&mut d[776..813], "", joliet); // bibliographic file
    let stamp = date.volume_date();
    d[813..830].copy_from_slice(&stamp); // creation
    d[830..847].copy_from_slice(&stamp); // modification
    d[847..863].copy_from_slice(b"0000000000000000"); // expiration: none
    d[864..881].copy_from_slice(&stamp); // effective
    d[881] = 1; // file structure version
    d
}

/// ISO 9660's two date forms of a [`Civil`] date (years 1900 to 2155).
trait IsoDate {
    fn record_date(&self) -> [u8; 7];
    fn volume_date(&self) -> [u8; 17];
}

impl IsoDate for Civil {
    fn record_date(&self) -> [u8; 7] {
        [
            (self.year - 1900) as u8,
            self.month,
            self.day,
            self.hour,
            self.min,
            self.sec,
            0,
        ]
    }

    fn volume_date(&self) -> [u8; 17] {
        let s = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year, self.month, self.day, self.hour, self.min, self.sec
        );
        let mut out = [0u8; 17];
        out[..16].copy_from_slice(s.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_700_000_000; // 2023-11-14 22:13:20 UTC

    fn sample() -> Vec<u8> {
        build(
            "cidata",
            &[
                IsoFile {
                    name: "user-data",
                    contents: b"#cloud-config\n",
                },
                IsoFile {
                    name: "meta-data",
                    contents: b"instance-id: i-1\n",
                },
            ],
            T,
        )
        .unwrap()
    }

    fn le32(b: &[u8]) -> u32 {
        u32::from_le_bytes(b[..4].try_into().unwrap())
    }

    fn be32(b: &[u8]) -> u32 {
        u32::from_be_bytes(b[..4].try_into().unwrap())
    }

    #[test]
    fn descriptors_sit_at_sectors_16_17_18() {
        let img = sample();
        assert_eq!(img.len() % SECTOR, 0);
        assert!(img[..16 * SECTOR].iter().all(|&b| b == 0));
        let pvd = &img[16 * SECTOR..17 * SECTOR];
        assert_eq!(&pvd[..7], b"\x01CD001\x01");
        assert_eq!(&pvd[40..72], format!("{:<32}", "cidata").as_bytes());
        let total = le32(&pvd[80..]);
        assert_eq!(total, be32(&pvd[84..]));
        assert_eq!(total as usize * SECTOR, img.len());
        assert_eq!(&pvd[128..132], &[0x00, 0x08, 0x08, 0x00]);
        assert_eq!(&pvd[813..827], b"20231114221320");
        let svd = &img[17 * SECTOR..18 * SECTOR];
        assert_eq!(&svd[..7], b"\x02CD001\x01");
        assert_eq!(&svd[88..91], b"%/E");
        assert_eq!(&svd[40..52], &joliet_name("cidata")[..12]);
        assert_eq!(&img[18 * SECTOR..18 * SECTOR + 7], b"\xffCD001\x01");
    }

    #[test]
    fn path_tables_point_at_the_roots_in_both_byte_orders() {
        let img = sample();
        for (vd, root) in [(16, ROOT), (17, JROOT)] {
            let d = &img[vd * SECTOR..];
            let l = le32(&d[140..]) as usize * SECTOR;
            let m = be32(&d[148..]) as usize * SECTOR;
            assert_eq!(le32(&img[l + 2..]), root);
            assert_eq!(be32(&img[m + 2..]), root);
            assert_eq!(le32(&d[158..]), root, "root record in descriptor");
        }
    }

    #[test]
    fn primary_root_carries_rock_ridge_and_sorted_names() {
        let img = sample();
        let root = &img[ROOT as usize * SECTOR..];
        // "." record: SP must be the first system use entry.
        let dot_len = root[0] as usize;
        assert_eq!(&root[34..41], &[b'S', b'P', 7, 1, 0xBE, 0xEF, 0]);
        let dot = &root[..dot_len];
        assert!(dot.windows(RR_ID.len()).any(|w| w == RR_ID), "ER entry");
        let mut off = dot_len + root[dot_len] as usize;
        let mut names = Vec::new();
        while root[off] != 0 {
            let len = root[off] as usize;
            let id_len = root[off + 32] as usize;
            names.push(String::from_utf8(root[off + 33..off + 33 + id_len].to_vec()).unwrap());
            let rec = &root[off..off + len];
            assert_eq!(len % 2, 0);
            assert!(rec.windows(2).any(|w| w == b"NM"));
            off += len;
        }
        assert_eq!(names, ["META_DAT.;1", "USER_DAT.;1"]);
    }

    #[test]
    fn file_contents_follow_the_directories() {
        let img = sample();
        let first = FIRST_DATA as usize * SECTOR;
        // meta-data was given second, so it sits in the second data sector.
        assert_eq!(&img[first..first + 14], b"#cloud-config\n");
        assert_eq!(
            &img[first + SECTOR..first + SECTOR + 17],
            b"instance-id: i-1\n"
        );
    }

    #[test]
    fn names_map_to_d_characters() {
        assert_eq!(primary_name("meta-data"), b"META_DAT.;1");
        assert_eq!(primary_name("network-config"), b"NETWORK_.;1");
        assert_eq!(primary_name("config.toml"), b"CONFIG.TOM;1");
        assert_eq!(joliet_name("a-b"), b"\0a\0-\0b\0;\x001");
    }

    #[test]
    fn rejects_bad_and_colliding_names() {
        let f = |n| IsoFile {
            name: n,
            contents: b"",
        };
        assert!(matches!(
            build("cidata", &[f("a/b")], T),
            Err(IsoError::BadName(_))
        ));
        assert!(matches!(
            build("cidata", &[f("user-data"), f("user_data")], T),
            Err(IsoError::NameCollision(..))
        ));
    }

    #[test]
    fn empty_files_take_no_sectors() {
        let img = build(
            "cidata",
            &[IsoFile {
                name: "x",
                contents: b"",
            }],
            T,
        )
        .unwrap();
        assert_eq!(img.len(), FIRST_DATA as usize * SECTOR);
    }
}
