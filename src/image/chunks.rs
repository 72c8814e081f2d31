//! Walking the chunks of PNG and RIFF (WebP) containers, bounds-checked: one iterator per
//! container for every reader of their structure (ICC extraction, metadata reading, lossless
//! stripping). Iteration ends at the first chunk whose payload does not fit in the input.

/// One chunk: its four-byte kind, its payload, and where the whole chunk (header, payload and
/// the PNG CRC or RIFF padding byte) sits in the input: `at..end` (`end` may pass the input's
/// end when the trailer is cut off).
#[derive(Debug, Clone, Copy)]
pub(super) struct Chunk<'a> {
    pub kind: &'a [u8],
    pub data: &'a [u8],
    pub at: usize,
    pub end: usize,
}

/// The chunks of a PNG after its signature: big-endian length, kind, payload, CRC.
pub(super) fn png(b: &[u8]) -> impl Iterator<Item = Chunk<'_>> {
    walk(b, true)
}

/// The chunks of a RIFF WebP after `RIFF`, its size and `WEBP`: kind, little-endian length,
/// payload, a padding byte after odd lengths.
pub(super) fn riff(b: &[u8]) -> impl Iterator<Item = Chunk<'_>> {
    walk(b, false)
}

fn walk(b: &[u8], png: bool) -> impl Iterator<Item = Chunk<'_>> {
    let mut pos: usize = if png { 8 } else { 12 };
    std::iter::from_fn(move || {
        let head = b.get(pos..pos.checked_add(8)?)?;
        let (kind, len) = if png {
            (&head[4..8], u32::from_be_bytes(head[0..4].try_into().ok()?))
        } else {
            (&head[0..4], u32::from_le_bytes(head[4..8].try_into().ok()?))
        };
        let len = usize::try_from(len).ok()?;
        let data = b.get(pos + 8..pos.checked_add(8)?.checked_add(len)?)?;
        let trailer = if png { 4 } else { len & 1 };
        let at = pos;
        pos = pos + 8 + len + trailer;
        Some(Chunk {
            kind,
            data,
            at,
            end: pos,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_walked_and_truncation_ends_the_walk() {
        let mut p = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [(b"IHDR", &b"0123456789abc"[..]), (b"tEXt", b"a\0b")] {
            p.extend_from_slice(&(data.len() as u32).to_be_bytes());
            p.extend_from_slice(kind);
            p.extend_from_slice(data);
            p.extend_from_slice(&[0; 4]);
        }
        let kinds: Vec<&[u8]> = png(&p).map(|c| c.kind).collect();
        assert_eq!(kinds, [&b"IHDR"[..], b"tEXt"]);
        let last = png(&p).last().unwrap();
        assert_eq!((last.data, last.end), (&b"a\0b"[..], p.len()));
        assert_eq!(png(&p[..p.len() - 6]).count(), 1);
        let mut w = b"RIFF\0\0\0\0WEBP".to_vec();
        w.extend_from_slice(b"VP8X\x03\0\0\0abc\0EXIF\x02\0\0\0xy");
        let c: Vec<(Vec<u8>, Vec<u8>)> = riff(&w)
            .map(|c| (c.kind.to_vec(), c.data.to_vec()))
            .collect();
        assert_eq!(
            c,
            [
                (b"VP8X".to_vec(), b"abc".to_vec()),
                (b"EXIF".to_vec(), b"xy".to_vec())
            ]
        );
        assert_eq!(riff(&w[..w.len() - 1]).count(), 1);
    }
}
