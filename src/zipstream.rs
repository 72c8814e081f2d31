//! A streaming ZIP writer for data exports (GDPR "download my data").
//!
//! The archive is produced front to back as [`Bytes`] chunks that can go straight into an HTTP
//! response body; nothing is ever seeked back to or patched, and the only state kept is one
//! small central-directory record (name and a few integers) per finished entry. Choices:
//!
//! - **Stored** (method 0), no compression: the payload is already-compressed images and a
//!   little JSON, so deflate would burn CPU for nothing and make output size unpredictable.
//! - **Data descriptors** (general-purpose flag bit 3) for entries produced as they are sent
//!   (the manifest, the audit events): their CRC-32 and size are not known when they start,
//!   so the local header carries zeros and the CRC and sizes follow the data. Entries whose
//!   bytes are at hand (`begin_known`: the originals) carry CRC and sizes in the local header
//!   instead, which streaming readers that refuse descriptors on stored entries accept. Bit 11
//!   marks names as UTF-8.
//! - **Always ZIP64**: an export can exceed 4 GiB or 65,535 entries, and at the time an entry
//!   starts we cannot know whether the archive will. Every entry therefore carries a ZIP64
//!   extra field (0x0001), the data descriptors are the 24-byte ZIP64 form, the central
//!   directory's 32-bit sizes and offsets are 0xFFFFFFFF with the real values in the ZIP64
//!   extra, and the archive ends with a ZIP64 end record and locator before a classic end
//!   record whose counts, size and offset are all "see ZIP64" (0xFFFF / 0xFFFFFFFF).
//!   "Version needed to extract" is 4.5, the ZIP64 level of the PKWARE APPNOTE.
//! - Entries are regular Unix files, mode 0644; times are UTC in DOS format (2 s resolution,
//!   clamped to 1980..=2107). Names are validated so no entry can escape the extraction
//!   directory (no absolute paths, backslashes, `.`/`..` or empty segments, control chars).
//!
//! Usage: `begin` → send the header; for each chunk `data(&chunk)` and send the chunk;
//! `end` → send the descriptor; after the last entry `finish` → send the directory.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

const LOCAL_HEADER_SIG: u32 = 0x0403_4b50;
const DATA_DESCRIPTOR_SIG: u32 = 0x0807_4b50;
const CENTRAL_HEADER_SIG: u32 = 0x0201_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;

/// 4.5: the APPNOTE version that introduced ZIP64.
const VERSION_NEEDED: u16 = 45;
/// High byte 3 = Unix (so external attributes hold a mode), low byte = APPNOTE 4.5.
const VERSION_MADE_BY: u16 = (3 << 8) | 45;
/// Bit 3: CRC and sizes are in the data descriptor; bit 11: the name is UTF-8.
const FLAGS: u16 = (1 << 3) | (1 << 11);
/// An entry whose CRC and sizes are in its local header (no descriptor).
const FLAGS_KNOWN: u16 = 1 << 11;
const METHOD_STORED: u16 = 0;
/// Unix `st_mode` of a regular file, rw-r--r--, in the high 16 bits.
const EXTERNAL_ATTRS: u32 = 0o100644 << 16;
const ZIP64_EXTRA_ID: u16 = 0x0001;
/// The 32-bit "value is in the ZIP64 record" marker.
const U32_SEE_ZIP64: u32 = u32::MAX;
const MAX_NAME_LEN: usize = 255;

/// Fixed part of a local file header (APPNOTE 4.3.7).
const LOCAL_HEADER_LEN: usize = 30;
/// Local ZIP64 extra: id, data size, original size, compressed size.
const LOCAL_EXTRA_LEN: u16 = 4 + 16;
/// ZIP64 data descriptor: signature, CRC-32, compressed size, uncompressed size.
const DESCRIPTOR_LEN: usize = 24;
/// Fixed part of a central directory header (APPNOTE 4.3.12).
const CENTRAL_HEADER_LEN: usize = 46;
/// Central ZIP64 extra: id, data size, uncompressed size, compressed size, header offset.
const CENTRAL_EXTRA_LEN: u16 = 4 + 24;
/// ZIP64 end of central directory record without extensible data (APPNOTE 4.3.14).
const ZIP64_EOCD_LEN: usize = 56;
const ZIP64_LOCATOR_LEN: usize = 20;
const EOCD_LEN: usize = 22;

/// 1980-01-01T00:00:00Z, the earliest DOS timestamp.
const DOS_MIN_UNIX: u64 = 315_532_800;
/// 2107-12-31T23:59:58Z, the latest DOS timestamp.
const DOS_MAX_UNIX: u64 = 4_354_819_198;

/// Errors of the writer (a misuse or an invalid name).
#[derive(Debug, thiserror::Error)]
pub enum ZipError {
    #[error("invalid entry name")]
    InvalidName,
    #[error("entry already open")]
    EntryOpen,
    #[error("no entry open")]
    NoEntry,
    #[error("entry data differs from what its header announced")]
    DataMismatch,
}

/// What the central directory needs of a finished entry.
#[derive(Debug)]
struct Central {
    flags: u16,
    name: Box<[u8]>,
    time: u16,
    date: u16,
    crc: u32,
    size: u64,
    header_offset: u64,
}

/// The entry being written.
#[derive(Debug)]
struct Open {
    /// CRC and size written up front (`begin_known`): no data descriptor.
    known: Option<(u32, u64)>,
    name: Box<[u8]>,
    time: u16,
    date: u16,
    header_offset: u64,
    size: u64,
    crc: crc32fast::Hasher,
}

/// A ZIP archive written front to back; see the module documentation.
#[derive(Debug, Default)]
pub struct ZipStream {
    offset: u64,
    central: Vec<Central>,
    current: Option<Open>,
}

impl ZipStream {
    /// An empty archive at offset 0.
    pub fn new() -> ZipStream {
        ZipStream::default()
    }

    /// Starts an entry; returns the local file header to send.
    pub fn begin(&mut self, name: &str, modified: SystemTime) -> Result<Bytes, ZipError> {
        self.start(name, modified, None)
    }

    /// Starts an entry whose bytes are all at hand: the local header carries the CRC and sizes
    /// and no data descriptor follows, which readers that refuse descriptors on stored entries
    /// (Java's `ZipInputStream`) accept. Send the header, then `data` through [`Self::data`];
    /// [`Self::end`] returns nothing to send and checks the size.
    pub fn begin_known(
        &mut self,
        name: &str,
        modified: SystemTime,
        data: &[u8],
    ) -> Result<Bytes, ZipError> {
        self.start(
            name,
            modified,
            Some((crc32fast::hash(data), data.len() as u64)),
        )
    }

    fn start(
        &mut self,
        name: &str,
        modified: SystemTime,
        known: Option<(u32, u64)>,
    ) -> Result<Bytes, ZipError> {
        if self.current.is_some() {
            return Err(ZipError::EntryOpen);
        }
        validate_name(name)?;
        let (time, date) = dos_datetime(modified);
        let name: Box<[u8]> = name.as_bytes().into();
        let mut b = Vec::with_capacity(LOCAL_HEADER_LEN + name.len() + LOCAL_EXTRA_LEN as usize);
        b.extend_from_slice(&LOCAL_HEADER_SIG.to_le_bytes());
        b.extend_from_slice(&VERSION_NEEDED.to_le_bytes());
        let (flags, crc, size32, size64) = match known {
            // Sizes in the ZIP64 extra, so the 32-bit fields say "see ZIP64".
            Some((crc, size)) => (FLAGS_KNOWN, crc, U32_SEE_ZIP64, size),
            // CRC and sizes follow in the data descriptor.
            None => (FLAGS, 0, 0, 0),
        };
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&METHOD_STORED.to_le_bytes());
        b.extend_from_slice(&time.to_le_bytes());
        b.extend_from_slice(&date.to_le_bytes());
        b.extend_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(&size32.to_le_bytes()); // compressed size
        b.extend_from_slice(&size32.to_le_bytes()); // uncompressed size
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(&LOCAL_EXTRA_LEN.to_le_bytes());
        b.extend_from_slice(&name);
        b.extend_from_slice(&ZIP64_EXTRA_ID.to_le_bytes());
        b.extend_from_slice(&(LOCAL_EXTRA_LEN - 4).to_le_bytes());
        b.extend_from_slice(&size64.to_le_bytes()); // original size
        b.extend_from_slice(&size64.to_le_bytes()); // compressed size
        self.current = Some(Open {
            known,
            name,
            time,
            date,
            header_offset: self.offset,
            size: 0,
            crc: crc32fast::Hasher::new(),
        });
        self.offset += b.len() as u64;
        Ok(Bytes::from(b))
    }

    /// Accounts for one chunk of the open entry's data (CRC, size, offset); the caller sends
    /// the chunk itself.
    pub fn data(&mut self, chunk: &[u8]) -> Result<(), ZipError> {
        let open = self.current.as_mut().ok_or(ZipError::NoEntry)?;
        open.crc.update(chunk);
        open.size += chunk.len() as u64;
        self.offset += chunk.len() as u64;
        Ok(())
    }

    /// Ends the open entry; returns its data descriptor to send (nothing for `begin_known`
    /// entries, whose data must then match what the header announced).
    pub fn end(&mut self) -> Result<Bytes, ZipError> {
        let open = self.current.take().ok_or(ZipError::NoEntry)?;
        let crc = open.crc.finalize();
        let (flags, descriptor) = match open.known {
            Some(announced) if announced != (crc, open.size) => {
                return Err(ZipError::DataMismatch);
            }
            Some(_) => (FLAGS_KNOWN, Vec::new()),
            None => {
                let mut b = Vec::with_capacity(DESCRIPTOR_LEN);
                b.extend_from_slice(&DATA_DESCRIPTOR_SIG.to_le_bytes());
                b.extend_from_slice(&crc.to_le_bytes());
                b.extend_from_slice(&open.size.to_le_bytes()); // compressed size (stored: the same)
                b.extend_from_slice(&open.size.to_le_bytes()); // uncompressed size
                (FLAGS, b)
            }
        };
        self.offset += descriptor.len() as u64;
        self.central.push(Central {
            flags,
            name: open.name,
            time: open.time,
            date: open.date,
            crc,
            size: open.size,
            header_offset: open.header_offset,
        });
        Ok(Bytes::from(descriptor))
    }

    /// Convenience: begin + data + end for a small in-memory entry; returns all bytes to send.
    pub fn entry(
        &mut self,
        name: &str,
        modified: SystemTime,
        data: &[u8],
    ) -> Result<Bytes, ZipError> {
        let header = self.begin(name, modified)?;
        self.data(data)?;
        let descriptor = self.end()?;
        let mut b = Vec::with_capacity(header.len() + data.len() + descriptor.len());
        b.extend_from_slice(&header);
        b.extend_from_slice(data);
        b.extend_from_slice(&descriptor);
        Ok(Bytes::from(b))
    }

    /// Central directory, ZIP64 end records and end record; consumes the writer. Err if an
    /// entry is still open.
    pub fn finish(self) -> Result<Bytes, ZipError> {
        if self.current.is_some() {
            return Err(ZipError::EntryOpen);
        }
        let per_entry = CENTRAL_HEADER_LEN + CENTRAL_EXTRA_LEN as usize;
        let names: usize = self.central.iter().map(|c| c.name.len()).sum();
        let mut b = Vec::with_capacity(
            self.central.len() * per_entry + names + ZIP64_EOCD_LEN + ZIP64_LOCATOR_LEN + EOCD_LEN,
        );
        for c in &self.central {
            b.extend_from_slice(&CENTRAL_HEADER_SIG.to_le_bytes());
            b.extend_from_slice(&VERSION_MADE_BY.to_le_bytes());
            b.extend_from_slice(&VERSION_NEEDED.to_le_bytes());
            b.extend_from_slice(&c.flags.to_le_bytes());
            b.extend_from_slice(&METHOD_STORED.to_le_bytes());
            b.extend_from_slice(&c.time.to_le_bytes());
            b.extend_from_slice(&c.date.to_le_bytes());
            b.extend_from_slice(&c.crc.to_le_bytes());
            b.extend_from_slice(&U32_SEE_ZIP64.to_le_bytes()); // compressed size
            b.extend_from_slice(&U32_SEE_ZIP64.to_le_bytes()); // uncompressed size
            b.extend_from_slice(&(c.name.len() as u16).to_le_bytes());
            b.extend_from_slice(&CENTRAL_EXTRA_LEN.to_le_bytes());
            b.extend_from_slice(&0u16.to_le_bytes()); // comment length
            b.extend_from_slice(&0u16.to_le_bytes()); // disk number start
            b.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            b.extend_from_slice(&EXTERNAL_ATTRS.to_le_bytes());
            b.extend_from_slice(&U32_SEE_ZIP64.to_le_bytes()); // local header offset
            b.extend_from_slice(&c.name);
            // ZIP64 extra: only the fields set to 0xFFFFFFFF above, in this fixed order.
            b.extend_from_slice(&ZIP64_EXTRA_ID.to_le_bytes());
            b.extend_from_slice(&(CENTRAL_EXTRA_LEN - 4).to_le_bytes());
            b.extend_from_slice(&c.size.to_le_bytes()); // uncompressed size
            b.extend_from_slice(&c.size.to_le_bytes()); // compressed size
            b.extend_from_slice(&c.header_offset.to_le_bytes());
        }
        let entries = self.central.len() as u64;
        let cd_offset = self.offset;
        let cd_size = b.len() as u64;

        // ZIP64 end of central directory record.
        b.extend_from_slice(&ZIP64_EOCD_SIG.to_le_bytes());
        b.extend_from_slice(&((ZIP64_EOCD_LEN - 12) as u64).to_le_bytes()); // size of the rest
        b.extend_from_slice(&VERSION_MADE_BY.to_le_bytes());
        b.extend_from_slice(&VERSION_NEEDED.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // number of this disk
        b.extend_from_slice(&0u32.to_le_bytes()); // disk with the central directory
        b.extend_from_slice(&entries.to_le_bytes()); // entries on this disk
        b.extend_from_slice(&entries.to_le_bytes()); // entries in total
        b.extend_from_slice(&cd_size.to_le_bytes());
        b.extend_from_slice(&cd_offset.to_le_bytes());

        // ZIP64 end of central directory locator.
        b.extend_from_slice(&ZIP64_LOCATOR_SIG.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // disk with the ZIP64 end record
        b.extend_from_slice(&(cd_offset + cd_size).to_le_bytes()); // ZIP64 end record offset
        b.extend_from_slice(&1u32.to_le_bytes()); // total number of disks

        // Classic end of central directory record: everything is in the ZIP64 records.
        b.extend_from_slice(&EOCD_SIG.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes()); // number of this disk
        b.extend_from_slice(&0u16.to_le_bytes()); // disk with the central directory
        b.extend_from_slice(&u16::MAX.to_le_bytes()); // entries on this disk
        b.extend_from_slice(&u16::MAX.to_le_bytes()); // entries in total
        b.extend_from_slice(&U32_SEE_ZIP64.to_le_bytes()); // central directory size
        b.extend_from_slice(&U32_SEE_ZIP64.to_le_bytes()); // central directory offset
        b.extend_from_slice(&0u16.to_le_bytes()); // comment length
        Ok(Bytes::from(b))
    }

    /// Bytes produced so far (for tests and metrics).
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// A relative path of non-empty segments, none `.` or `..`, at most 255 bytes, no backslash
/// and no control characters: safe to extract anywhere.
fn validate_name(name: &str) -> Result<(), ZipError> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name.starts_with('/')
        || name.contains('\\')
        || name.chars().any(char::is_control)
        || name
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if bad {
        Err(ZipError::InvalidName)
    } else {
        Ok(())
    }
}

/// `(time, date)` in MS-DOS format, UTC, clamped to what the format can express.
fn dos_datetime(t: SystemTime) -> (u16, u16) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .clamp(DOS_MIN_UNIX, DOS_MAX_UNIX);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let time = ((rem / 3600) << 11) | ((rem % 3600 / 60) << 5) | ((rem % 60) / 2);
    let date = ((year - 1980) << 9) | (month << 5) | day;
    (time as u16, date as u16)
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`, unsigned since the input is never before 1970).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn known_entries_need_no_descriptor() {
        let big: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let mut z = ZipStream::new();
        let mut out = Vec::new();
        out.extend_from_slice(
            &z.begin_known("images/a.jpeg", at(1_700_000_000), &big)
                .unwrap(),
        );
        for chunk in big.chunks(4_096) {
            z.data(chunk).unwrap();
            out.extend_from_slice(chunk);
        }
        assert!(z.end().unwrap().is_empty(), "no data descriptor");
        out.extend_from_slice(&z.begin_known("empty", at(0), b"").unwrap());
        assert!(z.end().unwrap().is_empty());
        assert_eq!(z.offset(), out.len() as u64);
        out.extend_from_slice(&z.finish().unwrap());
        // Through the central directory…
        let mut archive = zip::ZipArchive::new(Cursor::new(out.clone())).unwrap();
        let mut got = Vec::new();
        archive.by_index(0).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got, big);
        // …and front to back from the local headers alone, as streaming readers do.
        let mut r = Cursor::new(out);
        let mut f = zip::read::read_zipfile_from_stream(&mut r)
            .unwrap()
            .unwrap();
        assert_eq!(f.name(), "images/a.jpeg");
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert_eq!(got, big);
        drop(f);
        let f = zip::read::read_zipfile_from_stream(&mut r)
            .unwrap()
            .unwrap();
        assert_eq!(f.name(), "empty");
        // Data that differs from the announced CRC or size is refused.
        let mut z = ZipStream::new();
        z.begin_known("x", at(0), b"abc").unwrap();
        z.data(b"abd").unwrap();
        assert!(matches!(z.end(), Err(ZipError::DataMismatch)));
    }

    #[test]
    fn round_trips_through_the_zip_crate() {
        let big: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let utf8 = "photos/été/北京 ☃.webp";
        let mut z = ZipStream::new();
        let mut out = Vec::new();
        out.extend_from_slice(
            &z.entry("manifest.json", at(1_700_000_000), b"{\"v\":1}")
                .unwrap(),
        );
        out.extend_from_slice(
            &z.begin("images/01H/original.jpg", at(1_709_214_331))
                .unwrap(),
        );
        for chunk in big.chunks(7_919) {
            z.data(chunk).unwrap();
            out.extend_from_slice(chunk);
        }
        out.extend_from_slice(&z.end().unwrap());
        assert_eq!(z.offset(), out.len() as u64);
        out.extend_from_slice(&z.entry("empty.txt", UNIX_EPOCH, b"").unwrap());
        out.extend_from_slice(&z.entry(utf8, at(0), "données".as_bytes()).unwrap());
        assert_eq!(z.offset(), out.len() as u64);
        out.extend_from_slice(&z.finish().unwrap());

        let expected: Vec<(&str, Vec<u8>)> = vec![
            ("manifest.json", b"{\"v\":1}".to_vec()),
            ("images/01H/original.jpg", big.clone()),
            ("empty.txt", Vec::new()),
            (utf8, "données".as_bytes().to_vec()),
        ];
        let mut archive = zip::ZipArchive::new(Cursor::new(out)).unwrap();
        assert_eq!(archive.len(), expected.len());
        for (i, (name, data)) in expected.iter().enumerate() {
            let mut file = archive.by_index(i).unwrap();
            assert_eq!(file.name(), *name);
            assert_eq!(file.size(), data.len() as u64);
            let mut got = Vec::new();
            file.read_to_end(&mut got).unwrap(); // checks the CRC-32
            assert_eq!(&got, data, "{name}");
        }
        let mut got = Vec::new();
        archive
            .by_name(utf8)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, "données".as_bytes());
    }

    #[test]
    fn the_reader_checks_our_crc() {
        let mut z = ZipStream::new();
        let mut out = z
            .entry("a.bin", UNIX_EPOCH, b"hello world")
            .unwrap()
            .to_vec();
        out.extend_from_slice(&z.finish().unwrap());
        let pos = out.windows(11).position(|w| w == b"hello world").unwrap();
        out[pos] ^= 1;
        let mut archive = zip::ZipArchive::new(Cursor::new(out)).unwrap();
        let mut got = Vec::new();
        assert!(archive.by_index(0).unwrap().read_to_end(&mut got).is_err());
    }

    #[test]
    fn record_layouts_match_the_appnote() {
        let mut z = ZipStream::new();
        let header = z.begin("ab", UNIX_EPOCH).unwrap();
        assert_eq!(header.len(), 30 + 2 + 20);
        assert_eq!(&header[..4], b"PK\x03\x04");
        assert_eq!(&header[6..8], &0x0808u16.to_le_bytes());
        assert_eq!(&header[26..30], &[2, 0, 20, 0]);
        assert_eq!(&header[32..36], &[1, 0, 16, 0]);
        z.data(b"x").unwrap();
        z.data(b"yz").unwrap();
        let descriptor = z.end().unwrap();
        assert_eq!(&descriptor[..4], b"PK\x07\x08");
        assert_eq!(&descriptor[4..8], &crc32fast::hash(b"xyz").to_le_bytes());
        assert_eq!(&descriptor[8..16], &3u64.to_le_bytes()); // compressed size
        assert_eq!(&descriptor[16..24], &3u64.to_le_bytes()); // uncompressed size
        assert_eq!(z.offset(), 52 + 3 + 24);

        let tail = z.finish().unwrap();
        let (cd, rest) = tail.split_at(46 + 2 + 28);
        assert_eq!(&cd[..4], b"PK\x01\x02");
        assert_eq!(&cd[20..28], &[0xFF; 8]);
        assert_eq!(&cd[38..42], &(0o100644u32 << 16).to_le_bytes());
        assert_eq!(&cd[42..46], &[0xFF; 4]);
        assert_eq!(&cd[48..52], &[1, 0, 24, 0]);
        assert_eq!(&cd[52..60], &3u64.to_le_bytes()); // uncompressed size
        assert_eq!(&cd[60..68], &3u64.to_le_bytes()); // compressed size
        assert_eq!(&cd[68..76], &0u64.to_le_bytes()); // local header offset
        let (eocd64, rest) = rest.split_at(56);
        assert_eq!(&eocd64[..4], b"PK\x06\x06");
        assert_eq!(&eocd64[4..12], &44u64.to_le_bytes());
        assert_eq!(&eocd64[24..32], &1u64.to_le_bytes()); // entries on this disk
        assert_eq!(&eocd64[32..40], &1u64.to_le_bytes()); // entries in total
        assert_eq!(&eocd64[40..48], &76u64.to_le_bytes()); // directory size
        assert_eq!(&eocd64[48..56], &79u64.to_le_bytes()); // directory offset
        let (locator, eocd) = rest.split_at(20);
        assert_eq!(&locator[..4], b"PK\x06\x07");
        assert_eq!(&locator[8..16], &(79u64 + 76).to_le_bytes());
        assert_eq!(&locator[16..20], &1u32.to_le_bytes());
        assert_eq!(
            eocd,
            b"PK\x05\x06\0\0\0\0\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\0\0"
        );
    }

    #[test]
    fn dos_times_are_utc_and_clamped() {
        assert_eq!(
            dos_datetime(at(1_709_214_331)),
            ((13 << 11) | (45 << 5) | 15, (44 << 9) | (2 << 5) | 29)
        );
        assert_eq!(dos_datetime(at(315_532_800)), (0, (1 << 5) | 1));
        assert_eq!(dos_datetime(UNIX_EPOCH), (0, (1 << 5) | 1));
        assert_eq!(
            dos_datetime(UNIX_EPOCH - Duration::from_secs(86_400)),
            (0, (1 << 5) | 1)
        );
        let last = ((23 << 11) | (59 << 5) | 29, (127 << 9) | (12 << 5) | 31);
        assert_eq!(dos_datetime(at(4_354_819_199)), last);
        assert_eq!(dos_datetime(at(10_000_000_000)), last);
    }

    #[test]
    fn rejects_bad_names() {
        let long = "x".repeat(256);
        let bad = [
            "../x",
            "/abs",
            "a//b",
            "a\\b",
            "",
            "a\nb",
            "a/../b",
            "a/./b",
            "dir/",
            "\u{7f}",
            long.as_str(),
        ];
        let mut z = ZipStream::new();
        for name in bad {
            assert!(
                matches!(z.begin(name, UNIX_EPOCH), Err(ZipError::InvalidName)),
                "{name:?}"
            );
        }
        assert!(
            matches!(z.data(b"x"), Err(ZipError::NoEntry)),
            "a rejected name opens nothing"
        );
        assert!(z.entry(&"x".repeat(255), UNIX_EPOCH, b"").is_ok());
        assert!(z.entry("a/b..c/.d", UNIX_EPOCH, b"").is_ok());
    }

    #[test]
    fn rejects_misuse() {
        let mut z = ZipStream::new();
        assert!(matches!(z.data(b"x"), Err(ZipError::NoEntry)));
        assert!(matches!(z.end(), Err(ZipError::NoEntry)));
        z.begin("a", UNIX_EPOCH).unwrap();
        assert!(matches!(z.begin("b", UNIX_EPOCH), Err(ZipError::EntryOpen)));
        assert!(matches!(
            z.entry("c", UNIX_EPOCH, b""),
            Err(ZipError::EntryOpen)
        ));
        assert!(matches!(z.finish(), Err(ZipError::EntryOpen)));
    }
}
