//! The config document as text: the two YAML shapes (sectioned, and the older flat root-level
//! one, normalized here; mixing them is a parse error), TOML, the canonical sectioned export,
//! the hand-built JSON Schema of the sections, and the flat view of the effective settings.

use serde_json::{json, Map, Value};

use crate::config::FileConfig;

pub const SECTIONS: [&str; 4] = ["admission", "access", "storage", "advanced"];

/// Where each key of the flat (pre-section) shape lives now.
const FLAT_KEYS: [(&str, &str, &str); 27] = [
    ("listen_addr", "advanced", "listen_addr"),
    ("log_level", "advanced", "log_level"),
    ("cache_size_mb", "advanced", "cache_size_mb"),
    ("metadata_cache_mb", "advanced", "metadata_cache_mb"),
    ("codec_concurrency", "advanced", "codec_concurrency"),
    ("max_delta_ratio", "advanced", "max_delta_ratio"),
    ("max_object_size", "advanced", "max_object_size"),
    ("blocking_threads", "advanced", "blocking_threads"),
    (
        "bootstrap_password_hash",
        "advanced",
        "bootstrap_password_hash",
    ),
    ("config_sync_bucket", "advanced", "config_sync_bucket"),
    ("tls", "advanced", "tls"),
    ("authentication", "access", "authentication"),
    ("iam_mode", "access", "iam_mode"),
    ("access_key_id", "access", "access_key_id"),
    ("secret_access_key", "access", "secret_access_key"),
    ("iam_users", "access", "iam_users"),
    ("iam_groups", "access", "iam_groups"),
    ("data_dir", "storage", "filesystem"),
    ("filesystem", "storage", "filesystem"),
    ("s3", "storage", "s3"),
    ("region", "storage", "region"),
    ("force_path_style", "storage", "force_path_style"),
    ("backend", "storage", "backend"),
    ("backends", "storage", "backends"),
    ("default_backend", "storage", "default_backend"),
    ("backend_encryption", "storage", "backend_encryption"),
    ("buckets", "storage", "buckets"),
];

/// A document that could not be read as a config (syntax, shape or a mistyped value).
#[derive(Debug)]
pub struct ParseError(pub String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text as a JSON tree (YAML, or TOML when `toml`).
pub fn parse_tree(text: &str, toml: bool) -> Result<Value, ParseError> {
    let v: Value = if toml {
        toml::from_str(text).map_err(|e| ParseError(e.to_string()))?
    } else if text.trim().is_empty() {
        Value::Null
    } else {
        serde_yaml::from_str(text).map_err(|e| ParseError(e.to_string()))?
    };
    Ok(if v.is_null() { json!({}) } else { v })
}

/// The sectioned tree of `doc`: flat root-level keys move into their sections. Mixing the
/// two shapes, or a root that is not a map, is an error; unknown root keys are warnings.
pub fn normalize(doc: Value) -> Result<(Value, Vec<String>), ParseError> {
    let Value::Object(root) = doc else {
        return Err(ParseError("the config document must be a map".into()));
    };
    let has_section = root.keys().any(|k| SECTIONS.contains(&k.as_str()));
    let flat: Vec<&String> = root
        .keys()
        .filter(|k| FLAT_KEYS.iter().any(|(f, _, _)| f == k))
        .collect();
    if has_section && !flat.is_empty() {
        return Err(ParseError(format!(
            "mixing the flat root-level shape ({}) with sections (admission/access/storage/advanced) is not allowed",
            flat.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let mut out = Map::new();
    let mut warnings = vec![];
    for (k, v) in root {
        if SECTIONS.contains(&k.as_str()) {
            out.insert(k, v);
        } else if let Some((_, sec, key)) = FLAT_KEYS.iter().find(|(f, _, _)| *f == k) {
            let s = out
                .entry(sec.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = s {
                m.insert(key.to_string(), v);
            }
        } else {
            warnings.push(format!("unknown top-level key {k:?} is ignored"));
        }
    }
    Ok((Value::Object(out), warnings))
}

/// Parses a config text of either shape into the typed sections (not yet validated).
pub fn parse(text: &str, toml: bool) -> Result<(FileConfig, Vec<String>), ParseError> {
    let (tree, warnings) = normalize(parse_tree(text, toml)?)?;
    let fc = serde_json::from_value(tree).map_err(|e| ParseError(e.to_string()))?;
    Ok((fc, warnings))
}

/// Nulls, empty lists and empty maps are left out (they are the defaults).
pub fn prune(v: Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Array(a) => {
            let a: Vec<Value> = a.into_iter().filter_map(prune).collect();
            (!a.is_empty()).then_some(Value::Array(a))
        }
        Value::Object(m) => {
            let m: Map<String, Value> = m
                .into_iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                .collect();
            (!m.is_empty()).then_some(Value::Object(m))
        }
        other => Some(other),
    }
}

/// Drops the values of `section` that equal their schema default (the spec: "values equal
/// to their defaults are left out of canonical exports"), recursing through objects, maps of
/// objects (`buckets.<name>`) and arrays of objects (`backends[]`), then [`prune`]s.
pub fn prune_defaults(section: &str, v: Value) -> Option<Value> {
    fn walk(v: Value, schema: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .filter_map(|(k, v)| {
                        let sub = schema
                            .get("properties")
                            .and_then(|p| p.get(&k))
                            .or_else(|| {
                                schema.get("additionalProperties").filter(|a| a.is_object())
                            });
                        match sub {
                            Some(sub) if sub.get("default") == Some(&v) => None,
                            Some(sub) => Some((k, walk(v, sub))),
                            None => Some((k, v)),
                        }
                    })
                    .collect(),
            ),
            Value::Array(a) => match schema.get("items") {
                Some(items) => Value::Array(a.into_iter().map(|x| walk(x, items)).collect()),
                None => Value::Array(a),
            },
            other => other,
        }
    }
    let pruned = match section_schema(section) {
        Some(schema) => walk(v, &schema),
        None => v,
    };
    prune(pruned)
}

/// The canonical sectioned YAML of a normalized tree, keeping every value it holds
/// (secrets included: `config migrate` converts a file, it does not export it).
pub fn canonical_yaml(tree: &Value) -> String {
    let mut doc = Map::new();
    for s in SECTIONS {
        if let Some(v) = tree.get(s).cloned().and_then(prune) {
            doc.insert(s.to_string(), v);
        }
    }
    serde_yaml::to_string(&Value::Object(doc)).unwrap_or_default()
}

/// The built-in defaults as a sectioned document (`config defaults`).
pub fn defaults() -> Value {
    json!({
        "admission": {"blocks": [], "flags": {}},
        "access": {"iam_mode": "gui", "iam_users": [], "iam_groups": []},
        "storage": {"filesystem": "./data", "buckets": {}},
        "advanced": {
            "listen_addr": "0.0.0.0:9000",
            "cache_size_mb": 100,
            "metadata_cache_mb": 50,
            "max_delta_ratio": 0.75,
            "max_object_size": 104_857_600u64,
        },
    })
}

fn t(ty: &str) -> Value {
    json!({ "type": ty })
}

fn td(ty: &str, default: Value) -> Value {
    json!({ "type": ty, "default": default })
}

fn obj(props: Vec<(&str, Value)>) -> Value {
    let m: Map<String, Value> = props.into_iter().map(|(k, v)| (k.into(), v)).collect();
    json!({ "type": "object", "properties": m, "additionalProperties": false })
}

fn arr(items: Value) -> Value {
    json!({ "type": "array", "items": items })
}

fn strings() -> Value {
    arr(t("string"))
}

fn permission() -> Value {
    obj(vec![
        (
            "effect",
            json!({"enum": ["Allow", "Deny"], "default": "Allow"}),
        ),
        ("actions", strings()),
        ("resources", strings()),
        (
            "conditions",
            json!({
                "type": "object",
                "description": "AWS syntax {Operator: {key: value | [values]}}: String[Not]Equals[IgnoreCase], String[Not]Like, [Not]IpAddress (each optionally ...IfExists) on aws:SourceIp or s3:prefix",
                "additionalProperties": {"type": "object", "additionalProperties": {"anyOf": [t("string"), strings()]}}
            }),
        ),
    ])
}

fn encryption() -> Value {
    obj(vec![
        (
            "mode",
            json!({"enum": ["none", "aes256-gcm-proxy", "sse-kms", "sse-s3"]}),
        ),
        (
            "key",
            json!({"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}),
        ),
        (
            "key_id",
            json!({"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}),
        ),
        ("legacy_key", t("string")),
        ("legacy_key_id", t("string")),
    ])
}

fn backend() -> Value {
    obj(vec![
        ("name", t("string")),
        ("type", json!({"enum": ["s3", "filesystem"]})),
        ("path", t("string")),
        ("endpoint", t("string")),
        ("region", t("string")),
        ("force_path_style", t("boolean")),
        ("access_key_id", t("string")),
        ("secret_access_key", t("string")),
        ("encryption", encryption()),
    ])
}

/// The JSON Schema of one section. Hand-built from the typed sections in config.rs and
/// admission.rs (schemars is not in the dependency tree); a unit test checks that the
/// defaults document and a full example only use properties the schema declares.
fn section_schema(name: &str) -> Option<Value> {
    Some(match name {
        "admission" => {
            let action = json!({"oneOf": [
                {"enum": ["allow-anonymous", "deny", "continue"]},
                {"type": "object", "required": ["type", "status"], "additionalProperties": false,
                 "properties": {"type": {"const": "reject"},
                                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                                "message": {"type": "string"}}}
            ]});
            let matcher = obj(vec![
                (
                    "method",
                    arr(
                        json!({"enum": ["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"]}),
                    ),
                ),
                ("source_ip", t("string")),
                (
                    "source_ip_list",
                    json!({"type": "array", "items": {"type": "string"}, "maxItems": crate::admission::MAX_SOURCE_IPS}),
                ),
                ("bucket", t("string")),
                ("path_glob", t("string")),
                ("authenticated", t("boolean")),
                ("config_flag", t("string")),
            ]);
            let mut block = obj(vec![
                (
                    "name",
                    json!({"type": "string", "pattern": "^[A-Za-z0-9_:.-]{1,128}$"}),
                ),
                ("match", matcher),
                ("action", action),
            ]);
            block["required"] = json!(["name", "action"]);
            obj(vec![
                ("blocks", arr(block)),
                (
                    "flags",
                    json!({"type": "object", "additionalProperties": {"type": "boolean"}}),
                ),
            ])
        }
        "access" => {
            let mut user = obj(vec![
                ("name", t("string")),
                ("access_key_id", t("string")),
                ("secret_access_key", t("string")),
                ("enabled", td("boolean", json!(true))),
                ("groups", strings()),
                ("permissions", arr(permission())),
            ]);
            user["required"] = json!(["name", "access_key_id"]);
            let mut group = obj(vec![
                ("name", t("string")),
                ("description", t("string")),
                ("permissions", arr(permission())),
            ]);
            group["required"] = json!(["name"]);
            obj(vec![
                (
                    "iam_mode",
                    json!({"enum": ["gui", "declarative"], "default": "gui"}),
                ),
                ("authentication", json!({"enum": ["none"]})),
                ("access_key_id", t("string")),
                ("secret_access_key", t("string")),
                ("iam_users", arr(user)),
                ("iam_groups", arr(group)),
            ])
        }
        "storage" => {
            let bucket = obj(vec![
                ("compression", td("boolean", json!(true))),
                (
                    "max_delta_ratio",
                    json!({"type": "number", "minimum": 0, "maximum": 1}),
                ),
                ("backend", t("string")),
                ("alias", t("string")),
                ("public_prefixes", strings()),
                ("public", td("boolean", json!(false))),
            ]);
            let location = obj(vec![
                ("bucket", t("string")),
                ("prefix", td("string", json!(""))),
            ]);
            let mut rule = obj(vec![
                (
                    "name",
                    json!({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}),
                ),
                ("source", location.clone()),
                ("destination", location),
                (
                    "interval_secs",
                    json!({"type": "integer", "minimum": 1, "default": 3600}),
                ),
                ("enabled", td("boolean", json!(true))),
                ("replicate_deletes", td("boolean", json!(false))),
            ]);
            rule["required"] = json!(["name", "source", "destination"]);
            obj(vec![
                ("filesystem", td("string", json!("./data"))),
                ("s3", t("string")),
                ("region", td("string", json!("us-east-1"))),
                ("access_key_id", t("string")),
                ("secret_access_key", t("string")),
                ("force_path_style", td("boolean", json!(true))),
                ("backend", backend()),
                ("backend_encryption", encryption()),
                ("default_backend", t("string")),
                ("backends", arr(backend())),
                (
                    "buckets",
                    json!({"type": "object", "additionalProperties": bucket}),
                ),
                ("replication", obj(vec![("rules", arr(rule))])),
            ])
        }
        "advanced" => obj(vec![
            ("listen_addr", td("string", json!("0.0.0.0:9000"))),
            ("cache_size_mb", td("integer", json!(100))),
            ("metadata_cache_mb", td("integer", json!(50))),
            ("codec_concurrency", t("integer")),
            (
                "max_delta_ratio",
                json!({"type": "number", "minimum": 0, "maximum": 1, "default": 0.75}),
            ),
            ("max_object_size", td("integer", json!(104_857_600u64))),
            ("config_sync_bucket", t("string")),
            ("blocking_threads", t("integer")),
            ("bootstrap_password_hash", t("string")),
            (
                "tls",
                obj(vec![
                    ("enabled", td("boolean", json!(false))),
                    ("cert_path", t("string")),
                    ("key_path", t("string")),
                ]),
            ),
        ]),
        _ => return None,
    })
}

/// The JSON Schema of the whole file, or of one section (`None` for an unknown name).
pub fn schema(section: Option<&str>) -> Option<Value> {
    if let Some(s) = section {
        let mut v = section_schema(s)?;
        v["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        v["title"] = json!(format!("deltaglider_proxy config: {s}"));
        return Some(v);
    }
    let mut v = obj(SECTIONS
        .iter()
        .filter_map(|s| Some((*s, section_schema(s)?)))
        .collect());
    v["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    v["title"] = json!("deltaglider_proxy config");
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_leave_out_values_equal_to_their_defaults() {
        let adv =
            json!({"listen_addr": "0.0.0.0:9000", "cache_size_mb": 2048, "max_delta_ratio": 0.75});
        assert_eq!(
            prune_defaults("advanced", adv),
            Some(json!({"cache_size_mb": 2048}))
        );
        let st = json!({"buckets": {"r": {"compression": true, "max_delta_ratio": 0.5, "public": false},
                                     "s": {"compression": false}}});
        assert_eq!(
            prune_defaults("storage", st),
            Some(json!({"buckets": {"r": {"max_delta_ratio": 0.5}, "s": {"compression": false}}}))
        );
    }

    /// Every key of `doc` is declared by `schema` (objects with `properties`).
    fn covered(schema: &Value, doc: &Value, path: &str) {
        match doc {
            Value::Object(m) => {
                if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
                    for (k, v) in m {
                        let sub = props
                            .get(k)
                            .unwrap_or_else(|| panic!("{path}.{k} is not in the schema"));
                        covered(sub, v, &format!("{path}.{k}"));
                    }
                } else if let Some(ap) = schema.get("additionalProperties") {
                    for (k, v) in m {
                        covered(ap, v, &format!("{path}.{k}"));
                    }
                }
            }
            Value::Array(a) => {
                for v in a {
                    covered(&schema["items"], v, path);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn schema_declares_the_defaults_and_a_full_example() {
        let s = schema(None).unwrap();
        covered(&s, &defaults(), "");
        let example = r#"
admission:
  blocks:
    - name: office
      match: {method: [GET], source_ip_list: ["10.0.0.0/8"], bucket: b, path_glob: "x/*", authenticated: false, config_flag: f}
      action: {type: reject, status: 451, message: no}
  flags: {f: true}
access:
  iam_mode: declarative
  iam_users: [{name: u, access_key_id: K, secret_access_key: S, enabled: true, groups: [g], permissions: [{effect: Allow, actions: [read], resources: ["*"]}]}]
  iam_groups: [{name: g, description: d, permissions: []}]
storage:
  backends: [{name: a, type: filesystem, path: /tmp/x, encryption: {mode: none}}]
  buckets: {b: {compression: false, max_delta_ratio: 0.5, public_prefixes: [p/]}}
  replication: {rules: [{name: r, source: {bucket: a, prefix: x/}, destination: {bucket: b, prefix: y/}, interval_secs: 60, enabled: false, replicate_deletes: true}]}
advanced: {listen_addr: "127.0.0.1:1", tls: {enabled: false}}
"#;
        let fc: FileConfig = serde_yaml::from_str(example).unwrap();
        let v = prune(serde_json::to_value(&fc).unwrap()).unwrap();
        covered(&s, &v, "");
        assert!(schema(Some("nope")).is_none());
    }

    #[test]
    fn flat_shape_is_normalized_and_mixing_is_refused() {
        let (fc, w) = parse(
            "listen_addr: 127.0.0.1:9\nbuckets: {r: {public: true}}\nbogus: 1\n",
            false,
        )
        .unwrap();
        assert_eq!(fc.advanced.listen_addr.as_deref(), Some("127.0.0.1:9"));
        assert!(fc.storage.buckets["r"].public);
        assert!(w[0].contains("bogus"));
        let e = parse("listen_addr: x\nstorage: {}\n", false).unwrap_err();
        assert!(e.0.contains("mixing"), "{e}");
        let (fc, _) = parse("[advanced]\ncache_size_mb = 2048\n", true).unwrap();
        assert_eq!(fc.advanced.cache_size_mb, Some(2048));
    }
}
