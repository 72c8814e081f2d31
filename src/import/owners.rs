//! Who owns an imported object: one fixed owner, a segment of its key (`users/{owner}/**`), or
//! a CSV manifest (`key,owner[,title,alt_text,tags]`, tags `;`-separated) that may also give
//! its title, alt text and tags.

use std::collections::HashMap;

/// What the mapping says of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assigned {
    pub owner: String,
    pub title: Option<String>,
    pub alt_text: Option<String>,
    pub tags: Vec<String>,
}

/// How keys map to owners.
#[derive(Debug, Clone)]
pub enum Owners {
    Fixed(String),
    Pattern(Pattern),
    Manifest(HashMap<String, Assigned>),
}

/// Longest owner id an import accepts (identity providers' subjects are far shorter).
const MAX_OWNER: usize = 256;
/// Manifest rows: a manifest is read whole into memory, so it is bounded.
const MAX_ROWS: usize = 10_000_000;

/// An owner id as pixgate stores it: 1..=256 characters, none of them a control character.
pub fn valid_owner(owner: &str) -> bool {
    !owner.is_empty() && owner.chars().count() <= MAX_OWNER && !owner.chars().any(char::is_control)
}

impl Owners {
    /// The owner (and metadata) of `key`, or why there is none.
    pub fn assign(&self, key: &str) -> Result<Assigned, &'static str> {
        let a = match self {
            Owners::Fixed(o) => Assigned {
                owner: o.clone(),
                ..Assigned::default()
            },
            Owners::Pattern(p) => Assigned {
                owner: p.owner_of(key).ok_or("owner_pattern_mismatch")?.to_owned(),
                ..Assigned::default()
            },
            Owners::Manifest(m) => m.get(key).cloned().ok_or("not_in_manifest")?,
        };
        if valid_owner(&a.owner) {
            Ok(a)
        } else {
            Err("invalid_owner")
        }
    }
}

/// `/`-separated segments: a literal, `*` (any one segment), `{owner}` (any one segment, the
/// owner; exactly once), or a final `**` (one or more further segments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Seg>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(String),
    Any,
    Owner,
    Rest,
}

impl Pattern {
    pub fn parse(p: &str) -> Result<Pattern, String> {
        let parts: Vec<&str> = p.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, s) in parts.iter().enumerate() {
            segments.push(match *s {
                "" => return Err("empty segment".into()),
                "*" => Seg::Any,
                "{owner}" => Seg::Owner,
                "**" if i + 1 == parts.len() => Seg::Rest,
                "**" => return Err("`**` may only end the pattern".into()),
                lit if lit.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "segment `{lit}`: use `{{owner}}`, `*` or `**` alone"
                    ));
                }
                lit => Seg::Literal(lit.to_owned()),
            });
        }
        if segments.iter().filter(|s| **s == Seg::Owner).count() != 1 {
            return Err("the pattern must name `{owner}` exactly once".into());
        }
        Ok(Pattern { segments })
    }

    /// The owner segment of `key`, if `key` matches.
    pub fn owner_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let parts: Vec<&str> = key.split('/').collect();
        let mut owner = None;
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Seg::Rest => return (parts.len() > i).then_some(owner).flatten(),
                _ if i >= parts.len() => return None,
                Seg::Literal(l) if l != parts[i] => return None,
                Seg::Literal(_) | Seg::Any => {}
                Seg::Owner => owner = Some(parts[i]).filter(|o| !o.is_empty()),
            }
        }
        (parts.len() == self.segments.len())
            .then_some(owner)
            .flatten()
    }
}

/// Reads a manifest: `key,owner[,title,alt_text,tags]` per row, RFC 4180 quoting, an optional
/// header row (first field `key`), tags separated by `;`. A repeated key is an error, as is a
/// row without an owner: a manifest is the operator's word, so a mistake stops the run before
/// it starts rather than importing under the wrong owner.
pub fn parse_manifest(text: &str) -> Result<HashMap<String, Assigned>, String> {
    let mut out = HashMap::new();
    for (n, row) in csv_rows(text).enumerate() {
        let row = row.map_err(|e| format!("manifest line {}: {e}", n + 1))?;
        if row.iter().all(String::is_empty) {
            continue;
        }
        if n == 0 && row.first().is_some_and(|k| k.eq_ignore_ascii_case("key")) {
            continue;
        }
        if out.len() >= MAX_ROWS {
            return Err(format!("manifest has more than {MAX_ROWS} rows"));
        }
        let field = |i: usize| row.get(i).map(|s| s.trim()).filter(|s| !s.is_empty());
        let (Some(key), Some(owner)) = (row.first().filter(|k| !k.is_empty()), field(1)) else {
            return Err(format!("manifest row {}: needs key and owner", n + 1));
        };
        if !valid_owner(owner) {
            return Err(format!("manifest row {}: invalid owner", n + 1));
        }
        let tags = field(4)
            .map(|t| {
                t.split(';')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let a = Assigned {
            owner: owner.to_owned(),
            title: field(2).map(str::to_owned),
            alt_text: field(3).map(str::to_owned),
            tags,
        };
        if out.insert(key.clone(), a).is_some() {
            return Err(format!("manifest row {}: key listed twice", n + 1));
        }
    }
    Ok(out)
}

/// Rows of RFC 4180 CSV (`"` quotes, `""` inside quotes, CRLF or LF line ends).
fn csv_rows(text: &str) -> impl Iterator<Item = Result<Vec<String>, String>> + '_ {
    let mut chars = text.chars().peekable();
    std::iter::from_fn(move || {
        chars.peek()?;
        let mut row = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        loop {
            match (chars.next(), quoted) {
                (None, true) => return Some(Err("unterminated quote".into())),
                (None, false) => break,
                (Some('"'), true) if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (Some('"'), true) => quoted = false,
                (Some('"'), false) if field.is_empty() => quoted = true,
                (Some(','), false) => row.push(std::mem::take(&mut field)),
                (Some('\r'), false) if chars.peek() == Some(&'\n') => {}
                (Some('\n'), false) => break,
                (Some(c), _) => field.push(c),
            }
        }
        row.push(field);
        Some(Ok(row))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_take_the_owner_segment() {
        let p = Pattern::parse("users/{owner}/**").unwrap();
        assert_eq!(p.owner_of("users/alice/2024/a.jpg"), Some("alice"));
        assert_eq!(p.owner_of("users/alice/a.jpg"), Some("alice"));
        assert_eq!(p.owner_of("users/alice"), None, "`**` needs a segment");
        assert_eq!(p.owner_of("teams/alice/a.jpg"), None);
        assert_eq!(p.owner_of("users//a.jpg"), None, "empty owner");
        let p = Pattern::parse("*/{owner}/photo.jpg").unwrap();
        assert_eq!(p.owner_of("x/bob/photo.jpg"), Some("bob"));
        assert_eq!(p.owner_of("x/bob/photo.jpg/more"), None);
        for bad in [
            "users/**/x/{owner}",
            "users/*",
            "{owner}/{owner}",
            "a//{owner}",
            "u{owner}/x",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifests_parse_with_quotes_headers_and_tags() {
        let m = parse_manifest(
            "key,owner,title,alt_text,tags\r\n\
             a.jpg,alice,\"Sunset, beach\",\"a \"\"red\"\" sky\",sea; sky ;\n\
             b.png,bob\n\n",
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        let a = &m["a.jpg"];
        assert_eq!(a.owner, "alice");
        assert_eq!(a.title.as_deref(), Some("Sunset, beach"));
        assert_eq!(a.alt_text.as_deref(), Some("a \"red\" sky"));
        assert_eq!(a.tags, ["sea", "sky"]);
        assert_eq!(m["b.png"].title, None);
        for bad in [
            "a.jpg\n",
            "a.jpg,alice\na.jpg,bob\n",
            "\"a.jpg,alice\n",
            "a.jpg,\u{7}x\n",
        ] {
            assert!(parse_manifest(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn assignment_refuses_what_maps_to_no_valid_owner() {
        let o = Owners::Pattern(Pattern::parse("users/{owner}/**").unwrap());
        assert_eq!(o.assign("users/al/x.jpg").unwrap().owner, "al");
        assert_eq!(o.assign("other/x.jpg"), Err("owner_pattern_mismatch"));
        let m = Owners::Manifest(parse_manifest("x.jpg,carol\n").unwrap());
        assert_eq!(m.assign("y.jpg"), Err("not_in_manifest"));
        assert_eq!(Owners::Fixed("\n".into()).assign("k"), Err("invalid_owner"));
    }
}
