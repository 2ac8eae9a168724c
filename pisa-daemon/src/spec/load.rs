//! Multi-document YAML to claims. A document that fails to parse is
//! reported with its source and position and, whenever its metadata can
//! still be read, attributed to its claim, so that claim keeps its last
//! good state instead of vanishing.

use std::sync::Arc;

use serde::Deserialize;

use super::{ClaimError, ClaimKey, QoSClaim, API_VERSION, KIND};

/// One YAML document of a source.
#[derive(Clone, Debug)]
pub struct Document {
    /// `file.yaml#2`: where the document came from (1-based). Shared, so
    /// handing an unchanged document out again allocates nothing.
    pub origin: Arc<str>,
    /// Shared: an unchanged document is handed out again by the document
    /// cache without copying the claim, and the agent tells unchanged
    /// documents from changed ones by pointer before comparing values.
    /// The error is boxed: a `Document` is copied into every source
    /// snapshot, and an inline error made each one 168 bytes instead of 32
    /// (1.3 MiB a copy at 10,000 claims).
    pub result: Result<Arc<QoSClaim>, Box<ClaimError>>,
}

/// Splits `text` into documents and parses each as a QoSClaim. Returns
/// `Err` when the YAML stream itself is broken: then nothing in the source
/// can be trusted, and the caller keeps the source's last good state.
pub fn load_documents(source: &str, text: &str) -> Result<Vec<Document>, ClaimError> {
    let mut documents = Vec::new();
    for (index, deserializer) in serde_norway::Deserializer::from_str(text).enumerate() {
        let origin = origin(source, index);
        let value = match serde_norway::Value::deserialize(deserializer) {
            Ok(value) => value,
            Err(e) => {
                return Err(ClaimError {
                    origin,
                    claim: None,
                    field: "(document)".into(),
                    value: String::new(),
                    reason: format!("malformed YAML: {e}"),
                })
            }
        };
        documents.extend(document(origin, value));
    }
    Ok(documents)
}

/// `file.yaml#2`: the origin of the document numbered `number` (0-based).
pub(super) fn origin(source: &str, number: usize) -> String {
    format!("{source}#{}", number + 1)
}

/// A parsed YAML document as a claim document; `None` for an empty one
/// (e.g. after a trailing `---`), which holds no claim.
pub(super) fn document(origin: String, value: serde_norway::Value) -> Option<Document> {
    if value.is_null() {
        return None;
    }
    let result = parse_claim(&origin, value).map(Arc::new).map_err(Box::new);
    Some(Document {
        origin: origin.into(),
        result,
    })
}

fn parse_claim(origin: &str, value: serde_norway::Value) -> Result<QoSClaim, ClaimError> {
    let claim = key_of(&value);
    let error = |field: &str, value: &str, reason: String| ClaimError {
        origin: origin.to_owned(),
        claim: claim.clone(),
        field: field.to_owned(),
        value: value.to_owned(),
        reason,
    };
    if !value.is_mapping() {
        return Err(error(
            "(document)",
            &short(&value),
            "a QoSClaim must be a mapping with apiVersion, kind, metadata and spec".into(),
        ));
    }
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    if kind != KIND {
        return Err(error(
            "kind",
            kind,
            format!("unsupported kind; valid: {KIND}"),
        ));
    }
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("");
    if api_version != API_VERSION {
        return Err(error(
            "apiVersion",
            api_version,
            format!("unsupported apiVersion; valid: {API_VERSION}"),
        ));
    }
    serde_path_to_error::deserialize::<_, QoSClaim>(value).map_err(|e| {
        let path = match e.path().to_string() {
            root if root == "." => "(document)".to_owned(),
            path => path,
        };
        let inner = e.into_inner().to_string();
        error(&path, "", type_error_reason(&inner))
    })
}

/// serde's messages are good ("unknown field `rat`, expected `rate` or
/// `ceil`"); only the location suffix is dropped, since the field path
/// already says where.
fn type_error_reason(message: &str) -> String {
    let head = match message.split_once(" at line ") {
        Some((head, _)) => head,
        None => message,
    };
    // Only ports are integers in a claim; say so in user terms.
    head.replace("expected i64", "expected an integer port 1-65535")
}

fn key_of(value: &serde_norway::Value) -> Option<ClaimKey> {
    let metadata = value.get("metadata")?;
    let name = metadata.get("name")?.as_str()?;
    let namespace = metadata
        .get("namespace")
        .and_then(|n| n.as_str())
        .unwrap_or("default");
    Some(ClaimKey::new(namespace, name))
}

fn short(value: &serde_norway::Value) -> String {
    let text = serde_norway::to_string(value).unwrap_or_default();
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(60).collect()
}
