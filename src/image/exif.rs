//! Minimal, bounded EXIF reader: only the IFD0 Orientation tag (0x0112) is wanted.
//!
//! Input is untrusted; every offset is bounds-checked and the IFD entry count is capped, so a
//! hostile EXIF block costs at most a few hundred byte reads.

const TAG_ORIENTATION: u16 = 0x0112;
const MAX_ENTRIES: usize = 512;

/// Orientation 1..=8 from a TIFF-structured EXIF payload (starting at `II`/`MM`), or 1.
pub fn orientation(tiff: &[u8]) -> u8 {
    read_orientation(tiff)
        .filter(|o| (1..=8).contains(o))
        .unwrap_or(1)
}

fn read_orientation(tiff: &[u8]) -> Option<u8> {
    let le = match tiff.get(0..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |off: usize| -> Option<u16> {
        let b = tiff.get(off..off.checked_add(2)?)?;
        Some(if le {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        })
    };
    let u32_at = |off: usize| -> Option<u32> {
        let b = tiff.get(off..off.checked_add(4)?)?;
        let a = [b[0], b[1], b[2], b[3]];
        Some(if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    };
    if u16_at(2)? != 42 {
        return None;
    }
    let ifd = usize::try_from(u32_at(4)?).ok()?;
    let count = usize::from(u16_at(ifd)?).min(MAX_ENTRIES);
    for i in 0..count {
        let entry = ifd.checked_add(2)?.checked_add(i.checked_mul(12)?)?;
        if u16_at(entry)? == TAG_ORIENTATION {
            // Type SHORT (3), count 1: the value sits in the first two bytes of the value field.
            if u16_at(entry + 2)? != 3 {
                return None;
            }
            return u8::try_from(u16_at(entry + 8)?).ok();
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TIFF block with one IFD0 entry: Orientation = `o`.
    pub(crate) fn tiff_with_orientation(o: u16, le: bool) -> Vec<u8> {
        let mut v = Vec::new();
        let p16 = |v: &mut Vec<u8>, x: u16| {
            v.extend_from_slice(&if le { x.to_le_bytes() } else { x.to_be_bytes() })
        };
        let p32 = |v: &mut Vec<u8>, x: u32| {
            v.extend_from_slice(&if le { x.to_le_bytes() } else { x.to_be_bytes() })
        };
        v.extend_from_slice(if le { b"II" } else { b"MM" });
        p16(&mut v, 42);
        p32(&mut v, 8);
        p16(&mut v, 1);
        p16(&mut v, TAG_ORIENTATION);
        p16(&mut v, 3);
        p32(&mut v, 1);
        p16(&mut v, o);
        p16(&mut v, 0);
        p32(&mut v, 0);
        v
    }

    #[test]
    fn reads_both_byte_orders() {
        for o in 1..=8 {
            assert_eq!(orientation(&tiff_with_orientation(o, true)), o as u8);
            assert_eq!(orientation(&tiff_with_orientation(o, false)), o as u8);
        }
    }

    #[test]
    fn hostile_input_defaults_to_one() {
        assert_eq!(orientation(&[]), 1);
        assert_eq!(orientation(b"II"), 1);
        assert_eq!(orientation(&tiff_with_orientation(9, true)), 1);
        let mut t = tiff_with_orientation(6, true);
        t[4..8].copy_from_slice(&u32::MAX.to_le_bytes()); // IFD offset far outside
        assert_eq!(orientation(&t), 1);
        let mut t = tiff_with_orientation(6, true);
        t.truncate(14); // entry cut off
        assert_eq!(orientation(&t), 1);
        let mut t = tiff_with_orientation(6, true);
        t[8..10].copy_from_slice(&u16::MAX.to_le_bytes()); // absurd entry count
        assert_eq!(orientation(&t), 6);
    }
}
