//! Loading a claims file again without parsing it again. A 10,000-claim
//! file takes about 150 ms to parse whole, and an edit usually changes one
//! document of it; so the file is cut into its documents as text (cheap),
//! and only a document whose text is new is parsed. What is kept of the
//! text is a fingerprint a piece, not the text: at 10,000 claims the text
//! is 2.5 MiB that would stay resident for nothing else.
//!
//! The result is the same as `load_documents` on the whole text, by
//! construction: the text is cut only where YAML itself ends a document (a
//! `---` line at column 0 ends any node, even inside a block or quoted
//! scalar), each piece is parsed exactly as the stream parser would parse
//! it, and anything the cut does not handle (directives, `...` markers, a
//! piece that is not exactly one document, malformed YAML whose error must
//! carry the whole file's line numbers) is parsed whole instead.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
};

use xxhash_rust::xxh3::xxh3_128_with_seed;

use serde::Deserialize;

use super::{
    load::{document, origin},
    load_documents, ClaimError, Document,
};

/// What a piece of text amounted to when it was parsed.
#[derive(Clone, Debug)]
enum Piece {
    /// Comments or blank lines before the first `---`: no document.
    Nothing,
    /// A document that is empty (a trailing `---`): numbered, not a claim.
    Empty,
    Document(Document),
}

/// A piece's text as a 128-bit XXH3 hash under a seed drawn for each cache:
/// equal texts always agree, different texts by chance with odds of
/// 2^-128. (SipHash, std's, twice for 128 bits, cost 3 ms a reload at
/// 10,000 claims; XXH3 hashes the same 2.5 MB in a fraction of one.)
type Fingerprint = u128;

/// A piece of the last text loaded: its fingerprint, what it parsed to,
/// and the document number it had (its origin says it).
#[derive(Debug)]
struct Cached {
    fingerprint: Fingerprint,
    piece: Option<Piece>,
    number: usize,
}

/// The pieces of one source's last text, kept from one load to the next.
#[derive(Debug)]
pub struct DocumentCache {
    seed: u64,
    pieces: Vec<Cached>,
    /// Pieces parsed by the last `load` (the rest came from the cache).
    pub parsed_last: usize,
}

impl Default for DocumentCache {
    fn default() -> Self {
        Self {
            // std's per-process random keys, as a seed.
            seed: RandomState::new().hash_one(0u8),
            pieces: Vec::new(),
            parsed_last: 0,
        }
    }
}

impl DocumentCache {
    /// `load_documents(source, text)`, reusing what the last load parsed.
    /// A piece is reused when its text is one of the last load's pieces (by
    /// fingerprint): compared in place first (an edit leaves the other
    /// pieces where they were), looked up when the number of pieces changed
    /// (a claim added or removed above them), then renumbered.
    pub fn load(&mut self, source: &str, text: String) -> Result<Vec<Document>, ClaimError> {
        let Some(cuts) = split(&text) else {
            return self.whole(source, &text);
        };
        let mut old = std::mem::take(&mut self.pieces);
        let mut by_fingerprint: Option<HashMap<Fingerprint, usize>> = None;
        let piece_count = cuts.len();
        let mut pieces = Vec::with_capacity(cuts.len());
        let mut documents = Vec::with_capacity(cuts.len());
        let mut number = 0;
        self.parsed_last = 0;
        for (index, range) in cuts.into_iter().enumerate() {
            let piece_text = &text[range];
            let fingerprint = self.fingerprint(piece_text);
            let same_place = old.get(index).is_some_and(|c| c.fingerprint == fingerprint);
            // With as many pieces as before, a piece that differs in place
            // was edited; only when documents were added or removed can it
            // be elsewhere (and the lookup by text is worth building).
            let found = if same_place {
                Some(index)
            } else if old.len() == piece_count {
                None
            } else {
                by_fingerprint
                    .get_or_insert_with(|| {
                        old.iter()
                            .enumerate()
                            .map(|(j, c)| (c.fingerprint, j))
                            .collect()
                    })
                    .get(&fingerprint)
                    .copied()
            };
            let reused = found.and_then(|j| Some((old[j].piece.take()?, old[j].number)));
            let piece = match reused {
                // Same number, same origin: nothing to redo (an edit leaves
                // every other piece so, and formatting 10,000 origins to
                // compare them cost a quick edit milliseconds).
                Some((piece, was)) if was == number => piece,
                Some((piece, _)) => renumbered(piece, source, number),
                None => {
                    self.parsed_last += 1;
                    match parse_piece(source, number, piece_text, index == 0) {
                        Some(piece) => piece,
                        None => return self.whole(source, &text),
                    }
                }
            };
            let piece_number = number;
            match &piece {
                Piece::Nothing => {}
                Piece::Empty => number += 1,
                Piece::Document(document) => {
                    number += 1;
                    documents.push(document.clone());
                }
            }
            pieces.push(Cached {
                fingerprint,
                piece: Some(piece),
                number: piece_number,
            });
        }
        self.pieces = pieces;
        Ok(documents)
    }

    fn fingerprint(&self, text: &str) -> Fingerprint {
        xxh3_128_with_seed(text.as_bytes(), self.seed)
    }

    /// The whole text through the stream parser; nothing is kept, so the
    /// next load parses afresh.
    fn whole(&mut self, source: &str, text: &str) -> Result<Vec<Document>, ClaimError> {
        self.pieces.clear();
        self.parsed_last = usize::MAX;
        load_documents(source, text)
    }
}

/// A reused piece under its (possibly new) number: only the origin in it
/// says where it was.
fn renumbered(piece: Piece, source: &str, number: usize) -> Piece {
    let Piece::Document(mut document) = piece else {
        return piece;
    };
    let origin = origin(source, number);
    if *document.origin != *origin {
        if let Err(error) = &mut document.result {
            error.origin.clone_from(&origin);
        }
        document.origin = origin.into();
    }
    Piece::Document(document)
}

/// The text cut before each line that starts a document (`---` alone or
/// followed by a space or tab). `None` where the cut would not match the
/// stream parser: a directive (`%`) or a document end marker (`...`).
fn split(text: &str) -> Option<Vec<std::ops::Range<usize>>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with('%') || marker(line, "...") {
            return None;
        }
        if marker(line, "---") && offset > 0 {
            pieces.push(start..offset);
            start = offset;
        }
        offset += line.len();
    }
    pieces.push(start..text.len());
    Some(pieces)
}

fn marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// One piece parsed as the stream parser would, numbered `number` (0-based)
/// among the source's documents. `None`: the piece is not what the cut
/// promised (exactly one document; none at most for the text before the
/// first `---`), or it is malformed.
fn parse_piece(source: &str, number: usize, text: &str, first: bool) -> Option<Piece> {
    // The stream parser starts no document for leading comments; parsed
    // alone, they would be an empty one.
    let blank = text.lines().all(|line| {
        let line = line.trim_start();
        line.is_empty() || line.starts_with('#')
    });
    if first && blank {
        return Some(Piece::Nothing);
    }
    let mut stream = serde_norway::Deserializer::from_str(text);
    let deserializer = stream.next()?;
    let value = serde_norway::Value::deserialize(deserializer).ok()?;
    if stream.next().is_some() {
        return None;
    }
    Some(match document(origin(source, number), value) {
        Some(document) => Piece::Document(document),
        None => Piece::Empty,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The cache's documents, as text, against the stream parser's.
    fn same_as_whole(cache: &mut DocumentCache, text: &str) {
        let cached = format!("{:?}", cache.load("c.yaml", text.to_owned()));
        let whole = format!("{:?}", load_documents("c.yaml", text));
        assert_eq!(cached, whole, "for {text:?}");
    }

    fn claim(name: &str, rate: &str) -> String {
        format!(
            "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\nmetadata: {{name: {name}}}\n\
             spec:\n  trafficQoS:\n    name: {name}\n    qos_group: {{rate: {rate}}}\n"
        )
    }

    #[test]
    fn documents_match_the_stream_parser_for_every_shape_of_stream() {
        let (a, b) = (claim("a", "1mbit"), claim("b", "2mbit"));
        let texts = [
            String::new(),
            "\n\n".into(),
            "# only a comment\n".into(),
            a.clone(),
            format!("---\n{a}"),
            format!("# lead\n---\n{a}---\n{b}"),
            format!("{a}---\n{b}---\n"),
            format!("{a}---\n---\n{b}"),
            format!("{a}--- # a comment after the marker\n{b}"),
            format!("--- {{apiVersion: x}}\n{a}"),
            format!("{a}---\n{b}...\n"),
            format!("%YAML 1.2\n---\n{a}"),
            format!("{a}---\nkey: [unclosed\n---\n{b}"),
            format!("{a}---\n- a list\n"),
            format!("{a}---\n{}", claim("a", "2mbit")),
            format!("{a}---\n{}", claim("c", "fast")),
            "metadata:\n  note: |\n    ---- not a marker\n    text\n".into(),
            format!("{a}---\r\n{b}"),
            format!("{a}----\n{b}"),
            "a: |\n  x\n---\n  y\n".into(),
            "a: \"quoted\n---\n  more\"\n".into(),
        ];
        for text in &texts {
            same_as_whole(&mut DocumentCache::default(), text);
        }
        // Warm: every text loaded after every other.
        let mut cache = DocumentCache::default();
        for first in &texts {
            for second in &texts {
                cache.load("c.yaml", first.clone()).ok();
                same_as_whole(&mut cache, second);
            }
        }
    }

    #[test]
    fn an_edit_parses_only_the_document_it_changed() {
        let text = |rate: &str| -> String {
            (0..100)
                .map(|i| claim(&format!("c{i}"), if i == 50 { rate } else { "1mbit" }))
                .collect::<Vec<_>>()
                .join("---\n")
        };
        let mut cache = DocumentCache::default();
        let first = cache.load("c.yaml", text("1mbit")).unwrap();
        assert_eq!(cache.parsed_last, 100);
        let second = cache.load("c.yaml", text("2mbit")).unwrap();
        assert_eq!(cache.parsed_last, 1);
        let unchanged = |i: usize| match (&first[i].result, &second[i].result) {
            (Ok(a), Ok(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        assert!(unchanged(49) && unchanged(51) && !unchanged(50));
        same_as_whole(&mut cache, &text("3mbit"));
    }

    #[test]
    fn a_claim_removed_or_added_above_others_renumbers_them_without_parsing() {
        let text = |names: &[&str]| -> String {
            names
                .iter()
                .map(|n| claim(n, if *n == "bad" { "fast" } else { "1mbit" }))
                .collect::<Vec<_>>()
                .join("---\n")
        };
        let mut cache = DocumentCache::default();
        cache.load("c.yaml", text(&["a", "b", "bad", "c"])).unwrap();
        same_as_whole(&mut cache, &text(&["a", "bad", "c"]));
        assert_eq!(cache.parsed_last, 0, "b removed: bad and c renumbered");
        // The first document has no `---` line above it: as the new first,
        // `bad`'s text differs, so it alone is parsed.
        same_as_whole(&mut cache, &text(&["bad", "c"]));
        assert_eq!(cache.parsed_last, 1);
        same_as_whole(&mut cache, &text(&["bad", "new", "c"]));
        assert_eq!(cache.parsed_last, 1);
        // The same document twice: the second copy is parsed, not shared.
        same_as_whole(&mut cache, &text(&["b", "b", "bad"]));
    }

    #[test]
    fn a_malformed_document_gives_the_whole_files_error_and_forgets_the_rest() {
        let mut cache = DocumentCache::default();
        let good = format!("{}---\n{}", claim("a", "1mbit"), claim("b", "1mbit"));
        cache.load("c.yaml", good.clone()).unwrap();
        let broken = format!("{}---\nkey: [unclosed\n", claim("a", "1mbit"));
        let error = cache.load("c.yaml", broken.clone()).unwrap_err();
        assert_eq!(
            error.to_string(),
            load_documents("c.yaml", &broken).unwrap_err().to_string()
        );
        assert!(error.to_string().contains("line"), "{error}");
        cache.load("c.yaml", good.clone()).unwrap();
        assert_eq!(
            cache.parsed_last, 2,
            "nothing was kept from before the error"
        );
    }
}
