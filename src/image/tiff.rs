//! A bounds-checked reader of TIFF structures: EXIF blocks (JPEG APP1, PNG `eXIf`, WebP
//! `EXIF`) and TIFF files themselves. Every offset is checked, directories are capped at
//! [`MAX_ENTRIES`] entries; nothing here allocates by a size read from the input.

/// IFD entries read per directory.
pub(super) const MAX_ENTRIES: usize = 512;

/// A bounds-checked view of a TIFF structure.
pub(super) struct Tiff<'a> {
    pub(super) b: &'a [u8],
    pub(super) le: bool,
}

/// One IFD entry: where it sits, and its fields.
#[derive(Clone, Copy)]
pub(super) struct Entry {
    pub(super) at: usize,
    pub(super) tag: u16,
    pub(super) kind: u16,
    pub(super) count: u32,
}

impl<'a> Tiff<'a> {
    pub(super) fn new(b: &'a [u8]) -> Option<Tiff<'a>> {
        let le = match b.get(0..2)? {
            b"II" => true,
            b"MM" => false,
            _ => return None,
        };
        let t = Tiff { b, le };
        (t.u16(2)? == 42).then_some(t)
    }

    pub(super) fn u16(&self, off: usize) -> Option<u16> {
        let v: [u8; 2] = self.b.get(off..off.checked_add(2)?)?.try_into().ok()?;
        Some(if self.le {
            u16::from_le_bytes(v)
        } else {
            u16::from_be_bytes(v)
        })
    }

    pub(super) fn u32(&self, off: usize) -> Option<usize> {
        let v: [u8; 4] = self.b.get(off..off.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(if self.le {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        })
        .ok()
    }

    pub(super) fn ifd0(&self) -> Option<usize> {
        self.u32(4)
    }

    pub(super) fn entries(&self, ifd: usize) -> Option<Vec<Entry>> {
        let n = usize::from(self.u16(ifd)?).min(MAX_ENTRIES);
        (0..n)
            .map(|i| {
                let at = ifd.checked_add(2 + 12 * i)?;
                Some(Entry {
                    at,
                    tag: self.u16(at)?,
                    kind: self.u16(at + 2)?,
                    count: u32::try_from(self.u32(at + 4)?).ok()?,
                })
            })
            .collect()
    }

    /// Where an entry's value lives, and its length.
    pub(super) fn value(&self, e: Entry) -> Option<(usize, usize)> {
        let unit = match e.kind {
            1 | 2 | 6 | 7 => 1,
            3 | 8 => 2,
            4 | 9 | 11 => 4,
            5 | 10 | 12 => 8,
            _ => return None,
        };
        let len = usize::try_from(e.count).ok()?.checked_mul(unit)?;
        let at = if len <= 4 {
            e.at + 8
        } else {
            self.u32(e.at + 8)?
        };
        self.b.get(at..at.checked_add(len)?)?;
        Some((at, len))
    }

    pub(super) fn ascii(&self, e: Entry) -> Option<&'a [u8]> {
        if e.kind != 2 {
            return None;
        }
        let (at, len) = self.value(e)?;
        let s = &self.b[at..at + len];
        let s = &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())];
        (!s.is_empty() && s.len() <= 4096).then_some(s)
    }
}

/// The numeric value of `tag` in the IFD at `ifd`.
pub(super) fn entries_value(t: &Tiff<'_>, ifd: usize, tag: u16) -> Option<usize> {
    let e = t.entries(ifd)?.into_iter().find(|e| e.tag == tag)?;
    match e.kind {
        3 => t.u16(e.at + 8).map(usize::from),
        4 => t.u32(e.at + 8),
        _ => None,
    }
}

/// ImageWidth and ImageLength of a TIFF's first directory (a TIFF file is such a structure).
pub(super) fn tiff_size(b: &[u8]) -> Option<(u32, u32)> {
    let t = Tiff::new(b)?;
    let ifd0 = t.ifd0()?;
    let w = entries_value(&t, ifd0, 256)?;
    let h = entries_value(&t, ifd0, 257)?;
    (w > 0 && h > 0).then(|| Some((u32::try_from(w).ok()?, u32::try_from(h).ok()?)))?
}
