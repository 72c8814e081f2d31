//! Which prefix of a progressive JPEG's scans a downscaled decode needs (issue 20).
//!
//! A progressive JPEG sends its DCT coefficients in scans: first the DC of every component at
//! reduced precision, then bands of AC coefficients, then refinement scans that add the low
//! bits. A decode at 1/2, 1/4 or 1/8 scale (libjpeg-turbo's scaled IDCT) draws almost nothing
//! from the high-frequency bands and the last refinement bits, yet decoding them is most of the
//! work: on the 18 MP test photo (libjpeg's standard ten-scan script) the first four scans
//! decode at 1/4 scale in a fifth of the time of all ten.
//!
//! The rule, chosen by measurement (`docs/decoders.md`, "Progressive JPEGs"): stop after the
//! first scan at which **every component** holds a first pass of the coefficients the scaled
//! IDCT can represent — the (8/shrink)² lowest frequencies of the block, and never fewer than
//! the DC and AC 1–5 (a DC-only component is blurred by libjpeg-turbo's DC smoothing) — with
//! the DC missing at most 1 low bit and the AC at most 2. For libjpeg's standard ten-scan
//! script that is scan 4 at 1/4 and 1/8 scale and scan 5 at 1/2. A full-size decode (no
//! shrink) never stops early.
//!
//! Pure structure walk: no unsafe, no allocation beyond the caller's copy of the prefix. The
//! bytes were already accepted (upload validation decodes every scan with zune-jpeg), so
//! stopping early can only make a decode more lenient, never accept something upload refused.

/// Coefficients (zigzag order) tracked: up to (3, 3), the last a 1/2-scale IDCT uses.
const TRACKED: usize = 25;
/// Row and column (in the 8×8 block) of the first [`TRACKED`] zigzag positions
/// (libjpeg's `jpeg_natural_order`).
const ZIGZAG: [(u8, u8); TRACKED] = [
    (0, 0),
    (0, 1),
    (1, 0),
    (2, 0),
    (1, 1),
    (0, 2),
    (0, 3),
    (1, 2),
    (2, 1),
    (3, 0),
    (4, 0),
    (3, 1),
    (2, 2),
    (1, 3),
    (0, 4),
    (0, 5),
    (1, 4),
    (2, 3),
    (3, 2),
    (4, 1),
    (5, 0),
    (6, 0),
    (5, 1),
    (4, 2),
    (3, 3),
];
/// Whatever the scale, the DC and the five lowest AC: a component decoded from its DC alone
/// is blurred by libjpeg-turbo's DC smoothing (a 5×5 filter it applies while no AC has come).
const ALWAYS: usize = 6;
/// Low bits the DC and the AC may still be missing.
const DC_SLACK: u8 = 1;
const AC_SLACK: u8 = 2;
/// At most four components in a JPEG frame.
const MAX_COMPONENTS: usize = 4;
/// Bit position not yet received.
const NONE: u8 = u8::MAX;

/// The coefficients a decode at 1/`shrink` needs from every component: the block's
/// (8/`shrink`)² lowest frequencies (those its scaled IDCT can represent), and [`ALWAYS`].
fn needed(shrink: u32) -> [bool; TRACKED] {
    let n = 8 / shrink.clamp(1, 8);
    let mut need = [false; TRACKED];
    for (k, &(row, col)) in ZIGZAG.iter().enumerate() {
        need[k] = k < ALWAYS || (u32::from(row) < n && u32::from(col) < n);
    }
    need
}

/// Per component: its id and the precision (successive-approximation bit position `Al`) each
/// low-band coefficient has been received to, [`NONE`] before its first pass.
#[derive(Clone, Copy)]
struct Coverage {
    id: u8,
    al: [u8; TRACKED],
}

impl Coverage {
    fn complete(&self, need: &[bool; TRACKED]) -> bool {
        self.al
            .iter()
            .zip(need)
            .enumerate()
            .all(|(k, (&al, &need))| {
                !need || (al != NONE && al <= if k == 0 { DC_SLACK } else { AC_SLACK })
            })
    }
}

/// The byte length of the prefix of `b` (a JPEG) that holds every scan a decode at 1/`shrink`
/// needs, when that is less than the whole file: the caller decodes `b[..len]` followed by an
/// EOI marker. `None` when the whole file is needed — not progressive (SOF2), no shrink,
/// the rule is met only by the last scan, or the structure is anything unexpected (the decoder
/// then sees the file as it is).
pub fn needed_prefix(b: &[u8], shrink: u32) -> Option<usize> {
    if shrink < 2 || b.get(..2) != Some(&[0xFF, 0xD8][..]) {
        return None;
    }
    let need = needed(shrink);
    let mut components: Option<([Coverage; MAX_COMPONENTS], usize)> = None;
    let mut pos = 2usize;
    while pos + 1 < b.len() {
        if b[pos] != 0xFF {
            return None; // a well-formed file has a marker here
        }
        let marker = b[pos + 1];
        match marker {
            0xFF => {
                pos += 1;
                continue;
            }
            0xD9 => return None,
            0x01 | 0xD0..=0xD7 => {
                pos += 2;
                continue;
            }
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([*b.get(pos + 2)?, *b.get(pos + 3)?]));
        let segment = b.get(pos + 4..pos + 2 + len)?;
        match marker {
            0xC2 => components = Some(frame_components(segment)?),
            // Any other frame type (baseline, extended, lossless, arithmetic): whole file.
            0xC0 | 0xC1 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return None,
            _ => {}
        }
        pos += 2 + len;
        if marker != 0xDA {
            continue;
        }
        let (cov, n) = components.as_mut()?;
        record_scan(&mut cov[..*n], segment)?;
        pos = super::strip::skip_entropy(b, pos);
        if cov[..*n].iter().all(|c| c.complete(&need)) {
            // Met by this scan: cut here unless nothing but the end marker follows.
            let rest = b.get(pos..)?;
            return (rest.len() > 2 && !rest.starts_with(&[0xFF, 0xD9])).then_some(pos);
        }
    }
    None
}

/// The component ids of a SOF2 segment (after its length field).
fn frame_components(seg: &[u8]) -> Option<([Coverage; MAX_COMPONENTS], usize)> {
    let n = usize::from(*seg.get(5)?);
    if n == 0 || n > MAX_COMPONENTS {
        return None;
    }
    let mut cov = [Coverage {
        id: 0,
        al: [NONE; TRACKED],
    }; MAX_COMPONENTS];
    for (i, c) in cov.iter_mut().enumerate().take(n) {
        c.id = *seg.get(6 + 3 * i)?;
    }
    Some((cov, n))
}

/// Applies one SOS header (after its length field) to the coverage.
fn record_scan(cov: &mut [Coverage], seg: &[u8]) -> Option<()> {
    let ns = usize::from(*seg.first()?);
    let params = seg.get(1 + 2 * ns..4 + 2 * ns)?;
    let (ss, se, ah, al) = (
        usize::from(params[0]),
        usize::from(params[1]),
        params[2] >> 4,
        params[2] & 0x0F,
    );
    if ns == 0 || ss > se || se > 63 {
        return None;
    }
    for i in 0..ns {
        let id = *seg.get(1 + 2 * i)?;
        let c = cov.iter_mut().find(|c| c.id == id)?;
        for k in ss..=se.min(TRACKED - 1) {
            // A first pass (Ah = 0) sets the precision; a refinement lowers it to Al.
            if ah == 0 || c.al[k] != NONE {
                c.al[k] = al;
            }
        }
    }
    Some(())
}

/// `b[..len]` followed by an EOI marker.
pub fn cut(b: &[u8], len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 2);
    v.extend_from_slice(&b[..len.min(b.len())]);
    v.extend_from_slice(&[0xFF, 0xD9]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal progressive JPEG skeleton: SOI, SOF2 with `ids`, then one SOS per scan
    /// (`ids`, Ss, Se, Ah, Al) each followed by `data` entropy bytes, then EOI.
    fn skeleton(ids: &[u8], scans: &[(&[u8], u8, u8, u8, u8)], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8];
        let mut sof = vec![8, 0, 16, 0, 16, ids.len() as u8];
        for &id in ids {
            sof.extend_from_slice(&[id, 0x11, 0]);
        }
        b.extend_from_slice(&[0xFF, 0xC2]);
        b.extend_from_slice(&((sof.len() + 2) as u16).to_be_bytes());
        b.extend_from_slice(&sof);
        for (comps, ss, se, ah, al) in scans {
            let mut sos = vec![comps.len() as u8];
            for &c in *comps {
                sos.extend_from_slice(&[c, 0]);
            }
            sos.extend_from_slice(&[*ss, *se, (ah << 4) | al]);
            b.extend_from_slice(&[0xFF, 0xDA]);
            b.extend_from_slice(&((sos.len() + 2) as u16).to_be_bytes());
            b.extend_from_slice(&sos);
            b.extend_from_slice(data);
        }
        b.extend_from_slice(&[0xFF, 0xD9]);
        b
    }

    /// libjpeg's standard progressive script (jcparam.c `jpeg_simple_progression`, YCbCr).
    const STANDARD: [(&[u8], u8, u8, u8, u8); 10] = [
        (&[1, 2, 3], 0, 0, 0, 1),
        (&[1], 1, 5, 0, 2),
        (&[3], 1, 63, 0, 1),
        (&[2], 1, 63, 0, 1),
        (&[1], 6, 63, 0, 2),
        (&[1], 1, 63, 2, 1),
        (&[1, 2, 3], 0, 0, 1, 0),
        (&[3], 1, 63, 1, 0),
        (&[2], 1, 63, 1, 0),
        (&[1], 1, 63, 1, 0),
    ];

    /// Where scan `n` (1-based) of a skeleton with `data` bytes per scan ends.
    fn end_of_scan(b: &[u8], n: usize) -> usize {
        let mut seen = 0;
        for i in 0..b.len() - 1 {
            if b[i] == 0xFF && b[i + 1] == 0xDA {
                seen += 1;
                if seen == n + 1 {
                    return i;
                }
            }
        }
        b.len() - 2
    }

    #[test]
    fn standard_script_stops_after_four_or_five_scans_when_shrinking() {
        // Entropy data with a stuffed 0xFF and a restart marker, which are not scan ends.
        let data = [0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56];
        let b = skeleton(&[1, 2, 3], &STANDARD, &data);
        // 1/8 and 1/4: the DC and AC 1–5 of every component (scans 1–4); 1/2 also needs the
        // luma's AC up to (3, 3), first sent in scan 5.
        for shrink in [4, 8] {
            assert_eq!(needed_prefix(&b, shrink), Some(end_of_scan(&b, 4)));
        }
        assert_eq!(needed_prefix(&b, 2), Some(end_of_scan(&b, 5)));
        assert_eq!(
            needed_prefix(&b, 1),
            None,
            "a full-size decode reads every scan"
        );
        let cut = cut(&b, end_of_scan(&b, 4));
        assert!(cut.ends_with(&[0x56, 0xFF, 0xD9]));
    }

    #[test]
    fn coarse_first_passes_wait_for_their_refinement() {
        // DC sent at Al = 2 and the luma AC at Al = 3: not precise enough until refined.
        let scans: [(&[u8], u8, u8, u8, u8); 6] = [
            (&[1, 2], 0, 0, 0, 2),
            (&[1], 1, 63, 0, 3),
            (&[2], 1, 63, 0, 1),
            (&[1, 2], 0, 0, 2, 1),
            (&[1], 1, 63, 3, 2),
            (&[1], 1, 63, 2, 0),
        ];
        let b = skeleton(&[1, 2], &scans, &[7]);
        assert_eq!(needed_prefix(&b, 4), Some(end_of_scan(&b, 5)));
        assert_eq!(needed_prefix(&b, 2), Some(end_of_scan(&b, 5)));
    }

    #[test]
    fn spectral_selection_only_stops_once_every_component_has_its_low_band() {
        let scans: [(&[u8], u8, u8, u8, u8); 6] = [
            (&[1, 2, 3], 0, 0, 0, 0),
            (&[1], 1, 2, 0, 0),
            (&[1], 3, 63, 0, 0),
            (&[2], 1, 63, 0, 0),
            (&[3], 1, 9, 0, 0),
            (&[3], 10, 63, 0, 0),
        ];
        let b = skeleton(&[1, 2, 3], &scans, &[7]);
        assert_eq!(needed_prefix(&b, 8), Some(end_of_scan(&b, 5)));
    }

    #[test]
    fn whole_file_when_nothing_can_be_skipped_or_the_structure_is_unexpected() {
        // Met only by the last scan.
        let last: [(&[u8], u8, u8, u8, u8); 2] = [(&[1], 0, 0, 0, 0), (&[1], 1, 63, 0, 0)];
        assert_eq!(needed_prefix(&skeleton(&[1], &last, &[7]), 4), None);
        // Baseline frame.
        let mut baseline = skeleton(&[1, 2, 3], &STANDARD, &[7]);
        baseline[3] = 0xC0;
        assert_eq!(needed_prefix(&baseline, 4), None);
        // A scan naming a component the frame does not have; a scan before any frame.
        let stray: [(&[u8], u8, u8, u8, u8); 2] = [(&[9], 0, 0, 0, 0), (&[1], 1, 63, 0, 0)];
        assert_eq!(needed_prefix(&skeleton(&[1], &stray, &[7]), 4), None);
        let mut no_frame = skeleton(&[1, 2, 3], &STANDARD, &[7]);
        no_frame[3] = 0xC4; // the SOF2 becomes a (bogus) DHT
        assert_eq!(needed_prefix(&no_frame, 4), None);
        // Truncated inside a header; garbage between segments; not a JPEG.
        let b = skeleton(&[1, 2, 3], &STANDARD, &[7]);
        assert_eq!(needed_prefix(&b[..20], 4), None);
        let mut garbage = b.clone();
        garbage.insert(2, 0x00);
        assert_eq!(needed_prefix(&garbage, 4), None);
        assert_eq!(needed_prefix(b"\x89PNG", 4), None);
        assert_eq!(needed_prefix(&[], 4), None);
    }
}
