//! The HEIF container (ISO/IEC 23008-12 on ISO BMFF) that AVIF and HEIC share: which of the two
//! a file is (`ftyp` brands), the primary item's coded size (`ispe`), its orientation
//! (`irot`/`imir`), whether it is a grid of tiles, and its `colr` ICC profile. A box walk of
//! pixgate's own, in the parent process: bounds-checked, no allocation beyond the property list
//! and the profile. The pixels are decoded in a sandboxed child (`super::isolated`).

use super::ImageFormat;

/// HEIC brands: HEVC stills and sequences (`heic`, `heix`, `heim`, `heis`, `hevc`, `hevx`)
/// and the generic image brands (`mif1`, `msf1`) when no AVIF brand is named.
const HEIC_BRANDS: [&[u8; 4]; 8] = [
    b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1",
];

/// Which HEIF format `bytes` are by the brands of a leading `ftyp` box: AVIF when an AVIF brand
/// is named (`avif`, `avis`), else HEIC for a HEVC or generic image brand.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    let (kind, payload, _) = next_box(bytes)?;
    if kind != *b"ftyp" || payload.len() < 8 {
        return None;
    }
    let brands = || payload[..4].chunks(4).chain(payload[8..].chunks_exact(4));
    if brands().any(|b| b == b"avif" || b == b"avis") {
        Some(ImageFormat::Avif)
    } else if brands().any(|b| HEIC_BRANDS.iter().any(|h| b == *h)) {
        Some(ImageFormat::Heic)
    } else {
        None
    }
}

/// What the header says about the primary item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The coded size (`ispe`), before orientation.
    pub width: u32,
    pub height: u32,
    /// `irot` then `imir` as an EXIF orientation (1..=8).
    pub orientation: u8,
    /// The primary item is a grid of tiles.
    pub grid: bool,
}

/// One box: type, payload, total length.
pub(super) fn next_box(b: &[u8]) -> Option<([u8; 4], &[u8], usize)> {
    let size32 = u32::from_be_bytes(b.get(0..4)?.try_into().ok()?);
    let kind: [u8; 4] = b.get(4..8)?.try_into().ok()?;
    let (header, size) = match size32 {
        0 => (8, b.len()),
        1 => (
            16,
            usize::try_from(u64::from_be_bytes(b.get(8..16)?.try_into().ok()?)).ok()?,
        ),
        n => (8, n as usize),
    };
    if size < header || size > b.len() {
        return None;
    }
    Some((kind, &b[header..size], size))
}

/// The boxes of `b`, in order, stopping at the first malformed one.
pub(super) fn boxes(mut b: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        let (kind, payload, len) = next_box(b)?;
        b = &b[len..];
        Some((kind, payload))
    })
}

pub(super) fn find_box<'a>(b: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(b).find(|(k, _)| k == kind).map(|(_, p)| p)
}

fn be16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_be_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A property box: type and payload.
type Property<'a> = ([u8; 4], &'a [u8]);

/// The primary item's id, its `meta` payload and the properties associated with it, in
/// association order.
fn primary_properties(bytes: &[u8]) -> Option<(u32, &[u8], Vec<Property<'_>>)> {
    sniff(bytes)?;
    // `meta` is a full box: version and flags first.
    let meta = find_box(bytes, b"meta")?.get(4..)?;
    let pitm = find_box(meta, b"pitm")?;
    let primary = if pitm.first()? == &0 {
        be16(pitm, 4)?
    } else {
        be32(pitm, 4)?
    };
    let iprp = find_box(meta, b"iprp")?;
    let properties: Vec<Property<'_>> = boxes(find_box(iprp, b"ipco")?).collect();
    let mine = associations(find_box(iprp, b"ipma")?, primary)?
        .into_iter()
        .filter_map(|index| {
            index
                .checked_sub(1)
                .and_then(|i| properties.get(i))
                .copied()
        })
        .collect();
    Some((primary, meta, mine))
}

/// Reads the primary item's size, orientation and kind from `meta`.
pub fn header(bytes: &[u8]) -> Option<Header> {
    let (primary, meta, properties) = primary_properties(bytes)?;
    let grid = item_type(meta, primary)? == *b"grid";
    let (mut size, mut rotation, mut mirror) = (None, 0u16, None);
    for (kind, p) in properties {
        match &kind {
            b"ispe" => size = Some((be32(p, 4)?, be32(p, 8)?)),
            b"irot" => rotation = u16::from(p.first()? & 3),
            b"imir" => mirror = Some(p.first()? & 1),
            _ => {}
        }
    }
    let (width, height) = size?;
    // `irot` turns anticlockwise; `imir` mode 0 exchanges top and bottom (EXIF 4), mode 1
    // left and right (EXIF 2) — ISO/IEC 23008-12:2022 6.5.12; rotation comes first.
    let clockwise = (4 - rotation) % 4 * 90;
    let orientation = super::orient::compose(1, clockwise, mirror == Some(1), mirror == Some(0));
    Some(Header {
        width,
        height,
        orientation,
        grid,
    })
}

/// The 4CC type of item `id` from `iinf`/`infe` (versions 2 and 3).
fn item_type(meta: &[u8], id: u32) -> Option<[u8; 4]> {
    let iinf = find_box(meta, b"iinf")?;
    let skip = if iinf.first()? == &0 { 6 } else { 8 };
    for (kind, infe) in boxes(iinf.get(skip..)?) {
        if kind != *b"infe" {
            continue;
        }
        let (item, at) = match infe.first()? {
            2 => (be16(infe, 4)?, 8),
            3 => (be32(infe, 4)?, 10),
            _ => continue,
        };
        if item == id {
            return infe.get(at..at + 4)?.try_into().ok();
        }
    }
    None
}

/// Property indices (1-based) associated with `item` in `ipma`.
fn associations(ipma: &[u8], item: u32) -> Option<Vec<usize>> {
    let version = *ipma.first()?;
    let wide = ipma.get(3)? & 1 == 1;
    let count = be32(ipma, 4)?;
    let mut at = 8usize;
    for _ in 0..count {
        let id = if version < 1 {
            at += 2;
            be16(ipma, at - 2)?
        } else {
            at += 4;
            be32(ipma, at - 4)?
        };
        let n = usize::from(*ipma.get(at)?);
        at += 1;
        let mut found = Vec::with_capacity(n);
        for _ in 0..n {
            let index = if wide {
                at += 2;
                be16(ipma, at - 2)? & 0x7FFF
            } else {
                at += 1;
                u32::from(*ipma.get(at - 1)? & 0x7F)
            };
            found.push(index as usize);
        }
        if id == item {
            return Some(found);
        }
    }
    Some(Vec::new())
}

/// The primary item's ICC profile (a `colr` of type `prof` or `rICC` associated with it), if
/// any; at most 4 MiB, checked before anything is copied.
pub fn icc(bytes: &[u8]) -> Option<Vec<u8>> {
    let (_, _, properties) = primary_properties(bytes)?;
    properties
        .into_iter()
        .filter(|(k, _)| k == b"colr")
        .find_map(|(_, p)| {
            let profile = p.get(4..)?;
            (matches!(p.get(..4), Some(b"prof" | b"rICC")) && profile.len() <= 4 << 20)
                .then(|| profile.to_vec())
        })
}

/// Whether an `iref` of type `prem` says the colour is premultiplied by the alpha item.
pub fn premultiplied(bytes: &[u8]) -> bool {
    let Some(meta) = find_box(bytes, b"meta").and_then(|m| m.get(4..)) else {
        return false;
    };
    find_box(meta, b"iref")
        .is_some_and(|iref| boxes(iref.get(4..).unwrap_or(&[])).any(|(k, _)| k == *b"prem"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_walk_survives_truncation_and_bogus_sizes() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/photo_160x120.avif"
        ))
        .unwrap();
        let h = header(&bytes).unwrap();
        assert_eq!(
            (h.width, h.height, h.orientation, h.grid),
            (160, 120, 1, false)
        );
        for cut in 0..bytes.len().min(600) {
            let _ = header(&bytes[..cut]);
        }
        let mut bogus = bytes.clone();
        bogus[3] = 0xFF; // ftyp claims more than the file
        assert!(header(&bogus).is_none());
    }
}
