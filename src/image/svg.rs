//! SVG sources: rasterised by resvg (pure Rust), never served as SVG — an SVG from this origin
//! would run its scripts in the origin's context. Opt-in through `limits.upload_formats`.
//!
//! Checked, in order, before anything is drawn: the byte size ([`MAX_SVG_BYTES`]), UTF-8,
//! internal entities (none may reference another; their expansion is bounded), the element
//! count (roxmltree's node limit), nesting depth and `<use>` expansion counted through
//! references ([`MAX_DEPTH`], [`MAX_EXPANDED`]: a few `<use>` of `<use>` otherwise make
//! billions of elements), filter primitives, then after usvg's conversion the nesting of
//! isolated groups (each a canvas-sized layer while drawing), which sets the largest canvas
//! drawn ([`RENDER_BYTES`]). Nothing is fetched: `<image href>` to files or URLs resolves to
//! nothing; inline `data:` images are PNG, JPEG, GIF or WebP only (no nested SVG), each probed
//! and bounded, together at most [`MAX_INLINE_PIXELS`]; CSS `@import` and external fonts are
//! not loaded (text uses the one embedded font, DejaVu Sans).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use resvg::tiny_skia;
use resvg::usvg;
use usvg::roxmltree;

use super::{Bitmap, ImageError};

/// Largest SVG source, bytes.
pub const MAX_SVG_BYTES: usize = 4 << 20;
/// Elements, attributes' text and other XML nodes a document may have.
pub const MAX_NODES: u32 = 50_000;
/// Deepest element nesting, counting each `<use>` as the depth of what it references.
pub const MAX_DEPTH: u32 = 64;
/// Elements once every `<use>` is expanded.
pub const MAX_EXPANDED: u64 = 100_000;
/// Filter primitives (`fe…` elements) in a document: each allocates layer-sized buffers.
pub const MAX_FILTER_PRIMITIVES: u64 = 64;
/// Nested isolated groups (opacity, masks, clips, filters, blending) along one path.
pub const MAX_LAYERS: u32 = 16;
/// Pixels of all inline `data:` raster images together.
pub const MAX_INLINE_PIXELS: u64 = 16_000_000;
/// Memory for drawing: the canvas and one layer per isolated nesting level, 4 B/px each. The
/// canvas drawn is made smaller (the pipeline then enlarges) when the layers need it.
pub const RENDER_BYTES: u64 = 256 << 20;
/// Total expansion of internal entity references, bytes.
const MAX_ENTITY_EXPANSION: usize = 1 << 20;

/// The font every `<text>` is drawn with (fonts-dejavu-core 2.37, Bitstream Vera licence;
/// `src/image/fonts/LICENSE`).
static FONT: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");

static FONTS: LazyLock<Arc<usvg::fontdb::Database>> = LazyLock::new(|| {
    let mut db = usvg::fontdb::Database::new();
    db.load_font_data(FONT.to_vec());
    db.set_sans_serif_family("DejaVu Sans");
    db.set_serif_family("DejaVu Sans");
    db.set_monospace_family("DejaVu Sans");
    db.set_cursive_family("DejaVu Sans");
    db.set_fantasy_family("DejaVu Sans");
    Arc::new(db)
});

fn corrupt(what: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt(format!("SVG: {what}"))
}

/// Draws the SVG into a `width`×`height` canvas (its intrinsic size `intrinsic` scaled to
/// it), or a smaller one of the same aspect when its layers need the memory. RGBA, not
/// premultiplied.
pub fn decode(bytes: &[u8], (width, height): (u32, u32)) -> Result<Bitmap, ImageError> {
    if bytes.len() > MAX_SVG_BYTES {
        return Err(corrupt(format!("over {MAX_SVG_BYTES} bytes")));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not UTF-8 text"))?;
    check_entities(text)?;
    // External entities stay unresolved (roxmltree's default resolver is none).
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        nodes_limit: MAX_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, options).map_err(corrupt)?;
    check_structure(&doc)?;
    let inline_pixels = Arc::new(AtomicU64::new(0));
    let opt = options_with(inline_pixels);
    let tree = usvg::Tree::from_xmltree(&doc, &opt).map_err(corrupt)?;
    drop(doc);
    let layers = layer_depth(tree.root(), 0)?;
    // The canvas and one layer per level (plus one for a filter's or mask's working copy).
    let per_pixel = 4 * (u64::from(layers) + 2);
    let fit = (RENDER_BYTES / per_pixel) as f64 / (f64::from(width) * f64::from(height));
    let shrink = fit.sqrt().min(1.0);
    let w = ((f64::from(width) * shrink).floor() as u32).max(1);
    let h = ((f64::from(height) * shrink).floor() as u32).max(1);
    let mut pixmap = tiny_skia::Pixmap::new(w, h).ok_or_else(|| corrupt("canvas size"))?;
    let size = tree.size();
    let transform =
        tiny_skia::Transform::from_scale(w as f32 / size.width(), h as f32 / size.height());
    resvg::render(&tree, transform, &mut pixmap.as_mut());
    let mut data = pixmap.take();
    for px in data.chunks_exact_mut(4) {
        let a = u32::from(px[3]);
        if a != 0 && a != 255 {
            for c in &mut px[..3] {
                *c = ((u32::from(*c) * 255 + a / 2) / a).min(255) as u8;
            }
        }
    }
    Ok(Bitmap {
        width: w,
        height: h,
        channels: 4,
        data,
    })
}

/// usvg's options: the embedded font, nothing fetched, inline images probed and bounded.
fn options_with(inline_pixels: Arc<AtomicU64>) -> usvg::Options<'static> {
    usvg::Options {
        font_family: "DejaVu Sans".into(),
        fontdb: FONTS.clone(),
        image_href_resolver: usvg::ImageHrefResolver {
            resolve_data: Box::new(move |_mime, data, _opts| inline_image(data, &inline_pixels)),
            // Files, URLs, anything that is not a `data:` URI: nothing.
            resolve_string: Box::new(|_, _| None),
        },
        ..usvg::Options::default()
    }
}

/// An inline raster image, if pixgate's probe knows it as PNG, JPEG, GIF or WebP (whatever the
/// declared type says) and the inline images so far stay within [`MAX_INLINE_PIXELS`].
fn inline_image(data: Arc<Vec<u8>>, total: &AtomicU64) -> Option<usvg::ImageKind> {
    use super::ImageFormat;
    let p = super::probe(&data).ok()?;
    let pixels = u64::from(p.width) * u64::from(p.height);
    let before = total.fetch_add(pixels, Ordering::Relaxed);
    if before.saturating_add(pixels) > MAX_INLINE_PIXELS || p.width > 16_384 || p.height > 16_384 {
        return None;
    }
    match p.format {
        ImageFormat::Png => Some(usvg::ImageKind::PNG(data)),
        ImageFormat::Jpeg => Some(usvg::ImageKind::JPEG(data)),
        ImageFormat::Gif => Some(usvg::ImageKind::GIF(data)),
        ImageFormat::Webp => Some(usvg::ImageKind::WEBP(data)),
        _ => None,
    }
}

/// Internal entities: none may contain a reference (no nesting, so no billion laughs), and
/// their references in the document expand to at most [`MAX_ENTITY_EXPANSION`] bytes.
fn check_entities(text: &str) -> Result<(), ImageError> {
    let mut entities: HashMap<&str, usize> = HashMap::new();
    let mut rest = text;
    while let Some(at) = rest.find("<!ENTITY") {
        let decl = &rest[at + 8..];
        let end = decl
            .find('>')
            .ok_or_else(|| corrupt("unterminated entity"))?;
        let body = &decl[..end];
        if body.contains('&') || body.contains('%') {
            return Err(corrupt("entities may not reference entities"));
        }
        let name = body.split_whitespace().next().unwrap_or("");
        entities.insert(name, body.len());
        rest = &decl[end..];
    }
    if entities.is_empty() {
        return Ok(());
    }
    let mut expansion = 0usize;
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        let after = &rest[at + 1..];
        let name_end = after.find(';').unwrap_or(0);
        if let Some(len) = entities.get(&after[..name_end]) {
            expansion += len;
            if expansion > MAX_ENTITY_EXPANSION {
                return Err(corrupt("entity expansion over 1 MiB"));
            }
        }
        rest = after;
    }
    Ok(())
}

/// Depth, `<use>` expansion and filter primitives, through references, without recursion (a
/// hostile nesting must not exhaust this thread's stack either).
fn check_structure(doc: &roxmltree::Document<'_>) -> Result<(), ImageError> {
    use roxmltree::NodeId;
    let ids: HashMap<&str, NodeId> = doc
        .descendants()
        .filter_map(|n| n.attribute("id").map(|id| (id, n.id())))
        .collect();
    let href = |n: roxmltree::Node<'_, '_>| {
        n.attribute(("http://www.w3.org/1999/xlink", "href"))
            .or_else(|| n.attribute("href"))
            .and_then(|h| h.strip_prefix('#'))
            .and_then(|id| ids.get(id).copied())
    };
    // (elements when expanded, depth when expanded), per element; `None` while in progress.
    let mut done: HashMap<NodeId, Option<(u64, u32)>> = HashMap::new();
    let mut filters = 0u64;
    let root = doc.root_element();
    let mut stack = vec![(root.id(), false)];
    while let Some((id, children_done)) = stack.pop() {
        let Some(node) = doc.get_node(id) else {
            continue;
        };
        let referenced = if node.has_tag_name("use") {
            href(node)
        } else {
            None
        };
        let next: Vec<NodeId> = node
            .children()
            .filter(|c| c.is_element())
            .map(|c| c.id())
            .chain(referenced)
            .collect();
        if !children_done {
            if done.contains_key(&id) {
                continue;
            }
            done.insert(id, None);
            if node.tag_name().name().starts_with("fe") {
                filters += 1;
                if filters > MAX_FILTER_PRIMITIVES {
                    return Err(corrupt(format!(
                        "more than {MAX_FILTER_PRIMITIVES} filter primitives"
                    )));
                }
            }
            stack.push((id, true));
            for c in next {
                match done.get(&c) {
                    Some(None) => return Err(corrupt("a <use> references its own ancestor")),
                    Some(Some(_)) => {}
                    None => stack.push((c, false)),
                }
            }
            continue;
        }
        let (mut count, mut depth) = (1u64, 1u32);
        for c in next {
            let Some(Some((n, d))) = done.get(&c) else {
                return Err(corrupt("a <use> references its own ancestor"));
            };
            count = count.saturating_add(*n);
            depth = depth.max(d + 1);
        }
        if count > MAX_EXPANDED {
            return Err(corrupt(format!(
                "more than {MAX_EXPANDED} elements once <use> is expanded"
            )));
        }
        if depth > MAX_DEPTH {
            return Err(corrupt(format!("nesting deeper than {MAX_DEPTH}")));
        }
        done.insert(id, Some((count, depth)));
    }
    Ok(())
}

/// The most isolated groups nested along one path, masks' and patterns' contents included.
/// Bounded by [`check_structure`]'s depth, so the recursion is too.
fn layer_depth(group: &usvg::Group, above: u32) -> Result<u32, ImageError> {
    let here = above + u32::from(group.should_isolate());
    if here > MAX_LAYERS {
        return Err(corrupt(format!(
            "more than {MAX_LAYERS} nested layers (opacity, masks, clips, filters)"
        )));
    }
    let mut deepest = here;
    let mut failed = None;
    let mut visit = |g: &usvg::Group| match layer_depth(g, here) {
        Ok(d) => deepest = deepest.max(d),
        Err(e) => failed = Some(e),
    };
    for node in group.children() {
        // A child's clip path, mask, filter and pattern contents, then a child group itself.
        node.subroots(&mut visit);
        if let usvg::Node::Group(g) = node {
            visit(g);
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(deepest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_shapes_and_text_with_the_embedded_font() {
        let svg = br##"<svg xmlns="http://www.w3.org/2000/svg" width="64" height="32">
            <rect width="32" height="32" fill="#ff0000"/>
            <text x="34" y="24" font-family="Nonexistent Font" font-size="20">Hi</text>
        </svg>"##;
        let b = decode(svg, (64, 32)).unwrap();
        assert_eq!((b.width, b.height, b.channels), (64, 32, 4));
        assert_eq!(&b.data[(16 * 64 + 8) * 4..][..4], &[255, 0, 0, 255]);
        // The text drew something on the transparent right half.
        let right_ink = (0..32)
            .flat_map(|y| (34..64).map(move |x| (y * 64 + x) * 4 + 3))
            .filter(|&i| b.data[i] > 0)
            .count();
        assert!(right_ink > 20, "{right_ink}");
    }
}
