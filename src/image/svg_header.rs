//! The SVG probe: the intrinsic size from the root `<svg>` start tag alone (no XML parse), as
//! usvg computes it, so limits apply before [`super::svg`] parses anything.

/// Whether `bytes` look like an SVG document: text whose first element is `<svg`.
pub fn sniff(bytes: &[u8]) -> bool {
    root_tag(bytes).is_some()
}

/// The root `<svg …>` start tag's attribute text, past the prolog (BOM, XML declaration,
/// comments, processing instructions, DOCTYPE with its internal subset), within the first
/// 64 KiB.
fn root_tag(bytes: &[u8]) -> Option<&[u8]> {
    let b = &bytes[..bytes.len().min(64 << 10)];
    let mut pos = if b.starts_with(&[0xEF, 0xBB, 0xBF]) {
        3
    } else {
        0
    };
    loop {
        while b.get(pos).is_some_and(u8::is_ascii_whitespace) {
            pos += 1;
        }
        let rest = b.get(pos..)?;
        if rest.starts_with(b"<!--") {
            pos += find(rest, b"-->")? + 3;
        } else if rest.starts_with(b"<?") {
            pos += find(rest, b"?>")? + 2;
        } else if rest.starts_with(b"<!DOCTYPE") {
            pos += doctype_len(rest)?;
        } else if rest.starts_with(b"<svg")
            && rest
                .get(4)
                .is_some_and(|c| c.is_ascii_whitespace() || *c == b'>' || *c == b'/')
        {
            let end = tag_end(rest)?;
            return Some(&rest[4..end]);
        } else {
            return None;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Length of `<!DOCTYPE …>`, skipping a `[…]` internal subset.
fn doctype_len(b: &[u8]) -> Option<usize> {
    closing(b, true).map(|i| i + 1)
}

/// Index of the `>` closing a start tag, outside quoted attribute values.
fn tag_end(b: &[u8]) -> Option<usize> {
    closing(b, false)
}

/// Index of the first `>` outside quotes (and, with `subset`, outside `[…]`).
fn closing(b: &[u8], subset: bool) -> Option<usize> {
    let mut in_subset = false;
    let mut quote = None;
    for (i, &c) in b.iter().enumerate() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(c),
            (None, b'[') if subset => in_subset = true,
            (None, b']') if subset => in_subset = false,
            (None, b'>') if !in_subset => return Some(i),
            _ => {}
        }
    }
    None
}

/// One attribute's value in a start tag's attribute text.
fn attribute<'a>(attrs: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(attrs).ok()?;
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start();
        let quote = after.chars().next()?;
        if quote != '"' && quote != '\'' {
            return None;
        }
        let close = after[1..].find(quote)?;
        let value = &after[1..1 + close];
        if key.rsplit(char::is_whitespace).next() == Some(name) {
            return Some(value);
        }
        rest = &after[close + 2..];
    }
    None
}

/// A length in user units (px at 96 dpi), or `None` for a percentage, `auto` or junk.
fn length(v: &str) -> Option<f64> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    let factor = match unit.trim() {
        "" | "px" => 1.0,
        "in" => 96.0,
        "cm" => 96.0 / 2.54,
        "mm" => 96.0 / 25.4,
        "pt" => 4.0 / 3.0,
        "pc" => 16.0,
        "em" => 12.0,
        "ex" => 6.0,
        _ => return None,
    };
    let px = n * factor;
    (px.is_finite() && px > 0.0).then_some(px)
}

/// The intrinsic size, as usvg computes it: `width`/`height` in absolute units; a percentage
/// or a missing one takes the `viewBox`'s (× the percentage); with neither, 100.
pub fn header(bytes: &[u8]) -> Option<(u32, u32)> {
    let attrs = root_tag(bytes)?;
    let view_box: Option<(f64, f64)> = attribute(attrs, "viewBox").and_then(|v| {
        let n: Vec<f64> = v
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        (n.len() == 4 && n[2] > 0.0 && n[3] > 0.0 && n[2].is_finite() && n[3].is_finite())
            .then(|| (n[2], n[3]))
    });
    let side = |name: &str, from_box: Option<f64>| -> f64 {
        let raw = attribute(attrs, name);
        if let Some(px) = raw.and_then(length) {
            return px;
        }
        let pct = raw
            .and_then(|v| v.trim().strip_suffix('%'))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .filter(|p| p.is_finite() && *p > 0.0)
            .unwrap_or(100.0);
        from_box.unwrap_or(100.0) * pct / 100.0
    };
    let w = side("width", view_box.map(|b| b.0));
    let h = side("height", view_box.map(|b| b.1));
    let px = |v: f64| (v.ceil() >= 1.0 && v.ceil() <= f64::from(u32::MAX)).then(|| v.ceil() as u32);
    Some((px(w)?, px(h)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intrinsic_sizes_follow_usvg() {
        let size = |s: &str| header(s.as_bytes());
        assert_eq!(size(r#"<svg width="120" height="80"/>"#), Some((120, 80)));
        assert_eq!(size(r#"<svg width="1in" height="2cm"/>"#), Some((96, 76)));
        assert_eq!(
            size(
                r#"<?xml version="1.0"?><!-- x --><!DOCTYPE svg [<!ENTITY a "b">]><svg viewBox="0 0 300 150"/>"#
            ),
            Some((300, 150))
        );
        assert_eq!(
            size(r#"<svg width="50%" viewBox="0,0,300,150"/>"#),
            Some((150, 150))
        );
        assert_eq!(size("<svg/>"), Some((100, 100)));
        assert_eq!(
            size(r#"<svg viewBox="0 0 100000 100000"/>"#),
            Some((100_000, 100_000))
        );
        assert_eq!(size("<html><svg/></html>"), None);
        assert_eq!(size(r#"<svg width="-5" height="0"/>"#), Some((100, 100)));
        // Found by the fuzz smoke run: a viewBox of three numbers indexed a fourth.
        assert_eq!(size(r#"<svg viewBox="0 0 10"/>"#), Some((100, 100)));
    }
}
