//! MongoDB's `$jsonSchema` (JSON Schema draft 4 with BSON types), as document validators use
//! it: parsing the schema once, checking a document against it, and the failed rules in the
//! shape mongod reports them in a validation error's `errInfo.details.schemaRulesNotSatisfied`
//! (mongodb/mongo `src/mongo/db/matcher/doc_validation_error.cpp`).
//!
//! As in JSON Schema, a keyword constrains only values it applies to: `minimum` ignores strings,
//! `minLength` ignores numbers, `properties` ignores a missing property.

use super::compare::{as_f64, compare_values, is_number, type_name, values_equal};
use crate::server::error::{ServerError, ServerResult};
use bson::{doc, Bson, Document};
use regex::Regex;
use std::cmp::Ordering;

/// A parsed schema: its keywords in the order they were written.
#[derive(Debug, Clone)]
pub struct Schema {
    rules: Vec<(Document, Rule)>,
}

#[derive(Debug, Clone)]
enum Rule {
    /// `bsonType` / `type`: the type names the value may have.
    Types(Vec<String>),
    Required(Vec<String>),
    Properties(Vec<(String, Schema)>),
    PatternProperties(Vec<(Regex, Schema)>),
    /// `additionalProperties`: false, or a schema every other property must satisfy; knows the
    /// names and patterns `properties`/`patternProperties` already cover.
    AdditionalProperties {
        allowed: Option<Box<Schema>>,
        named: Vec<String>,
        patterns: Vec<Regex>,
    },
    Minimum(Bson, bool),
    Maximum(Bson, bool),
    MultipleOf(f64),
    MinLength(usize),
    MaxLength(usize),
    Pattern(Regex),
    Enum(Vec<Bson>),
    Items(Box<Schema>),
    MinItems(usize),
    MaxItems(usize),
    UniqueItems,
    MinProperties(usize),
    MaxProperties(usize),
    AllOf(Vec<Schema>),
    AnyOf(Vec<Schema>),
    OneOf(Vec<Schema>),
    Not(Box<Schema>),
}

const BSON_TYPES: &[&str] = &[
    "double",
    "string",
    "object",
    "array",
    "binData",
    "undefined",
    "objectId",
    "bool",
    "date",
    "null",
    "regex",
    "dbPointer",
    "javascript",
    "symbol",
    "javascriptWithScope",
    "int",
    "timestamp",
    "long",
    "decimal",
    "minKey",
    "maxKey",
    "number",
];
const JSON_TYPES: &[&str] = &["object", "array", "number", "boolean", "string", "null"];

fn failed(msg: impl Into<String>) -> ServerError {
    ServerError::failed_to_parse(msg)
}

fn count(keyword: &str, v: &Bson) -> ServerResult<usize> {
    let n = match v {
        Bson::Int32(i) => *i as f64,
        Bson::Int64(i) => *i as f64,
        Bson::Double(d) => *d,
        _ => {
            return Err(failed(format!(
                "$jsonSchema keyword '{keyword}' must be a number"
            )))
        }
    };
    if n < 0.0 || n.fract() != 0.0 {
        return Err(failed(format!(
            "$jsonSchema keyword '{keyword}' must be a non-negative integer"
        )));
    }
    Ok(n as usize)
}

fn strings(keyword: &str, v: &Bson) -> ServerResult<Vec<String>> {
    let items: Vec<&Bson> = match v {
        Bson::String(_) => vec![v],
        Bson::Array(a) if !a.is_empty() => a.iter().collect(),
        _ => {
            return Err(failed(format!(
                "$jsonSchema keyword '{keyword}' must be a string or a nonempty array of strings"
            )))
        }
    };
    items
        .into_iter()
        .map(|s| match s {
            Bson::String(s) => Ok(s.clone()),
            _ => Err(failed(format!(
                "$jsonSchema keyword '{keyword}' array elements must be strings"
            ))),
        })
        .collect()
}

fn regex(keyword: &str, v: &Bson) -> ServerResult<Regex> {
    let Bson::String(p) = v else {
        return Err(failed(format!(
            "$jsonSchema keyword '{keyword}' must be a string"
        )));
    };
    Regex::new(p).map_err(|e| failed(format!("invalid regular expression in {keyword}: {e}")))
}

fn sub_schema(keyword: &str, v: &Bson) -> ServerResult<Schema> {
    match v {
        Bson::Document(d) => Schema::parse(d),
        _ => Err(failed(format!(
            "$jsonSchema keyword '{keyword}' must be an object"
        ))),
    }
}

fn schemas(keyword: &str, v: &Bson) -> ServerResult<Vec<Schema>> {
    match v {
        Bson::Array(a) if !a.is_empty() => a.iter().map(|s| sub_schema(keyword, s)).collect(),
        _ => Err(failed(format!(
            "$jsonSchema keyword '{keyword}' must be a nonempty array"
        ))),
    }
}

impl Schema {
    /// Parses a `$jsonSchema` object; unknown or unsupported keywords are refused as mongod
    /// refuses them.
    pub fn parse(spec: &Document) -> ServerResult<Schema> {
        let mut rules = Vec::new();
        let exclusive = |k: &str| matches!(spec.get(k), Some(Bson::Boolean(true)));
        for (keyword, value) in spec {
            let rule = match keyword.as_str() {
                "bsonType" => {
                    let names = strings(keyword, value)?;
                    if let Some(bad) = names.iter().find(|n| !BSON_TYPES.contains(&n.as_str())) {
                        return Err(ServerError::bad_value(format!(
                            "Unknown type name alias: {bad}"
                        )));
                    }
                    Rule::Types(names)
                }
                "type" => {
                    let names = strings(keyword, value)?;
                    if let Some(bad) = names.iter().find(|n| !JSON_TYPES.contains(&n.as_str())) {
                        return Err(ServerError::bad_value(format!(
                            "Unknown type name alias: {bad}"
                        )));
                    }
                    Rule::Types(names)
                }
                "required" => {
                    match value {
                        Bson::Array(a) if !a.is_empty() => Rule::Required(strings(keyword, value)?),
                        _ => return Err(failed(
                            "$jsonSchema keyword 'required' must be a nonempty array of strings",
                        )),
                    }
                }
                "properties" => {
                    let Bson::Document(d) = value else {
                        return Err(failed("$jsonSchema keyword 'properties' must be an object"));
                    };
                    let mut props = Vec::new();
                    for (name, s) in d {
                        props.push((name.clone(), sub_schema("properties", s)?));
                    }
                    Rule::Properties(props)
                }
                "patternProperties" => {
                    let Bson::Document(d) = value else {
                        return Err(failed(
                            "$jsonSchema keyword 'patternProperties' must be an object",
                        ));
                    };
                    let mut props = Vec::new();
                    for (pattern, s) in d {
                        let re = regex(keyword, &Bson::String(pattern.clone()))?;
                        props.push((re, sub_schema(keyword, s)?));
                    }
                    Rule::PatternProperties(props)
                }
                "additionalProperties" => {
                    let allowed = match value {
                        Bson::Boolean(true) => continue,
                        Bson::Boolean(false) => None,
                        Bson::Document(d) => Some(Box::new(Schema::parse(d)?)),
                        _ => {
                            return Err(failed(
                                "$jsonSchema keyword 'additionalProperties' must be either an object or a boolean",
                            ))
                        }
                    };
                    let named = match spec.get("properties") {
                        Some(Bson::Document(d)) => d.keys().cloned().collect(),
                        _ => Vec::new(),
                    };
                    let patterns = match spec.get("patternProperties") {
                        Some(Bson::Document(d)) => d
                            .keys()
                            .map(|p| regex("patternProperties", &Bson::String(p.clone())))
                            .collect::<ServerResult<_>>()?,
                        _ => Vec::new(),
                    };
                    Rule::AdditionalProperties {
                        allowed,
                        named,
                        patterns,
                    }
                }
                "minimum" | "maximum" => {
                    if !is_number(value) {
                        return Err(failed(format!(
                            "$jsonSchema keyword '{keyword}' must be a number"
                        )));
                    }
                    if keyword == "minimum" {
                        Rule::Minimum(value.clone(), exclusive("exclusiveMinimum"))
                    } else {
                        Rule::Maximum(value.clone(), exclusive("exclusiveMaximum"))
                    }
                }
                "exclusiveMinimum" | "exclusiveMaximum" => {
                    let base = if keyword == "exclusiveMinimum" {
                        "minimum"
                    } else {
                        "maximum"
                    };
                    if !matches!(value, Bson::Boolean(_)) {
                        return Err(failed(format!(
                            "$jsonSchema keyword '{keyword}' must be a boolean"
                        )));
                    }
                    if !spec.contains_key(base) {
                        return Err(failed(format!(
                            "$jsonSchema keyword '{base}' must be a present if {keyword} is present"
                        )));
                    }
                    continue;
                }
                "multipleOf" => match as_f64(value) {
                    Some(m) if m > 0.0 => Rule::MultipleOf(m),
                    _ => {
                        return Err(failed(
                            "$jsonSchema keyword 'multipleOf' must have a positive value",
                        ))
                    }
                },
                "minLength" => Rule::MinLength(count(keyword, value)?),
                "maxLength" => Rule::MaxLength(count(keyword, value)?),
                "pattern" => Rule::Pattern(regex(keyword, value)?),
                "enum" => match value {
                    Bson::Array(a) if !a.is_empty() => Rule::Enum(a.clone()),
                    _ => {
                        return Err(failed(
                            "$jsonSchema keyword 'enum' cannot be an empty array",
                        ))
                    }
                },
                "items" => match value {
                    Bson::Document(d) => Rule::Items(Box::new(Schema::parse(d)?)),
                    _ => {
                        return Err(ServerError::not_implemented(
                            "$jsonSchema 'items' as an array of schemas is not supported",
                        ))
                    }
                },
                "minItems" => Rule::MinItems(count(keyword, value)?),
                "maxItems" => Rule::MaxItems(count(keyword, value)?),
                "uniqueItems" => match value {
                    Bson::Boolean(true) => Rule::UniqueItems,
                    Bson::Boolean(false) => continue,
                    _ => {
                        return Err(failed(
                            "$jsonSchema keyword 'uniqueItems' must be a boolean",
                        ))
                    }
                },
                "minProperties" => Rule::MinProperties(count(keyword, value)?),
                "maxProperties" => Rule::MaxProperties(count(keyword, value)?),
                "allOf" => Rule::AllOf(schemas(keyword, value)?),
                "anyOf" => Rule::AnyOf(schemas(keyword, value)?),
                "oneOf" => Rule::OneOf(schemas(keyword, value)?),
                "not" => Rule::Not(Box::new(sub_schema(keyword, value)?)),
                "title" | "description" => {
                    if !matches!(value, Bson::String(_)) {
                        return Err(failed(format!(
                            "$jsonSchema keyword '{keyword}' must be a string"
                        )));
                    }
                    continue;
                }
                "$schema" | "default" | "definitions" | "format" | "id" | "$ref" => {
                    return Err(failed(format!(
                        "$jsonSchema keyword '{keyword}' is not currently supported"
                    )))
                }
                "additionalItems" | "dependencies" | "encrypt" | "encryptMetadata" => {
                    return Err(ServerError::not_implemented(format!(
                        "$jsonSchema keyword '{keyword}' is not supported by the embedded server"
                    )))
                }
                other => {
                    return Err(failed(format!("Unknown $jsonSchema keyword: {other}")));
                }
            };
            let mut specified = Document::new();
            specified.insert(keyword.clone(), value.clone());
            rules.push((specified, rule));
        }
        Ok(Schema { rules })
    }

    /// The rules `doc` (the top level, an object) does not satisfy; empty when it matches.
    pub fn failures(&self, doc: &Document) -> Vec<Document> {
        self.check(Some(&Bson::Document(doc.clone())))
    }

    pub fn matches_value(&self, v: Option<&Bson>) -> bool {
        self.check(v).is_empty()
    }

    fn check(&self, v: Option<&Bson>) -> Vec<Document> {
        let mut out = Vec::new();
        for (specified, rule) in &self.rules {
            if let Some(mut detail) = rule.check(v) {
                let name = specified.keys().next().cloned().unwrap_or_default();
                let mut d = doc! {"operatorName": name};
                if !matches!(rule, Rule::Properties(_) | Rule::PatternProperties(_)) {
                    d.insert("specifiedAs", specified.clone());
                }
                for (k, val) in std::mem::take(&mut detail) {
                    d.insert(k, val);
                }
                out.push(d);
            }
        }
        out
    }
}

fn bson_type_matches(name: &str, v: &Bson) -> bool {
    match name {
        "number" => is_number(v),
        "boolean" => matches!(v, Bson::Boolean(_)),
        "object" => matches!(v, Bson::Document(_)),
        other => type_name(v) == other,
    }
}

fn considered(reason: &str, v: &Bson) -> Document {
    doc! {"reason": reason, "consideredValue": v.clone()}
}

impl Rule {
    /// `Some(details)` when `v` breaks this rule.
    fn check(&self, v: Option<&Bson>) -> Option<Document> {
        match self {
            Rule::Types(names) => {
                let v = v?;
                if names.iter().any(|n| bson_type_matches(n, v)) {
                    return None;
                }
                let mut d = considered("type did not match", v);
                d.insert("consideredType", type_name(v));
                Some(d)
            }
            Rule::Required(names) => {
                let Some(Bson::Document(d)) = v else {
                    return None;
                };
                let missing: Vec<&String> = names.iter().filter(|n| !d.contains_key(*n)).collect();
                (!missing.is_empty()).then(|| doc! {"missingProperties": missing})
            }
            Rule::Properties(props) => {
                let Some(Bson::Document(d)) = v else {
                    return None;
                };
                let mut not_satisfied = Vec::new();
                for (name, schema) in props {
                    if let Some(value) = d.get(name) {
                        let details = schema.check(Some(value));
                        if !details.is_empty() {
                            not_satisfied.push(doc! {"propertyName": name, "details": details});
                        }
                    }
                }
                (!not_satisfied.is_empty()).then(|| doc! {"propertiesNotSatisfied": not_satisfied})
            }
            Rule::PatternProperties(props) => {
                let Some(Bson::Document(d)) = v else {
                    return None;
                };
                let mut not_satisfied = Vec::new();
                for (name, value) in d {
                    for (re, schema) in props {
                        if re.is_match(name) {
                            let details = schema.check(Some(value));
                            if !details.is_empty() {
                                not_satisfied.push(doc! {
                                    "propertyName": name, "regexMatched": re.as_str(),
                                    "details": details,
                                });
                            }
                        }
                    }
                }
                (!not_satisfied.is_empty()).then(|| doc! {"propertiesNotSatisfied": not_satisfied})
            }
            Rule::AdditionalProperties {
                allowed,
                named,
                patterns,
            } => {
                let Some(Bson::Document(d)) = v else {
                    return None;
                };
                let extra: Vec<(&String, &Bson)> = d
                    .iter()
                    .filter(|(k, _)| !named.contains(k) && !patterns.iter().any(|p| p.is_match(k)))
                    .collect();
                match allowed {
                    None => (!extra.is_empty()).then(|| {
                        doc! {"additionalProperties": extra.iter().map(|(k, _)| (*k).clone()).collect::<Vec<_>>()}
                    }),
                    Some(schema) => {
                        let mut not_satisfied = Vec::new();
                        for (k, value) in extra {
                            let details = schema.check(Some(value));
                            if !details.is_empty() {
                                not_satisfied.push(doc! {"propertyName": k, "details": details});
                            }
                        }
                        (!not_satisfied.is_empty())
                            .then(|| doc! {"propertiesNotSatisfied": not_satisfied})
                    }
                }
            }
            Rule::Minimum(bound, exclusive) | Rule::Maximum(bound, exclusive) => {
                let v = v.filter(|v| is_number(v))?;
                let ord = compare_values(v, bound);
                let ok = match (matches!(self, Rule::Minimum(..)), exclusive) {
                    (true, false) => ord != Ordering::Less,
                    (true, true) => ord == Ordering::Greater,
                    (false, false) => ord != Ordering::Greater,
                    (false, true) => ord == Ordering::Less,
                };
                (!ok).then(|| considered("comparison failed", v))
            }
            Rule::MultipleOf(m) => {
                let x = v.and_then(as_f64)?;
                let ok = (x / m).fract() == 0.0;
                (!ok).then(|| {
                    considered(
                        "considered value was not a multiple of specified value",
                        v.unwrap(),
                    )
                })
            }
            Rule::MinLength(n) | Rule::MaxLength(n) => {
                let Some(Bson::String(s)) = v else {
                    return None;
                };
                let len = s.chars().count();
                let ok = if matches!(self, Rule::MinLength(_)) {
                    len >= *n
                } else {
                    len <= *n
                };
                (!ok).then(|| considered("specified string length was not satisfied", v.unwrap()))
            }
            Rule::Pattern(re) => {
                let Some(Bson::String(s)) = v else {
                    return None;
                };
                (!re.is_match(s))
                    .then(|| considered("regular expression did not match", v.unwrap()))
            }
            Rule::Enum(values) => {
                let v = v?;
                let found = values.iter().any(|e| values_equal(e, v));
                (!found).then(|| considered("value was not found in enum", v))
            }
            Rule::Items(schema) => {
                let Some(Bson::Array(a)) = v else { return None };
                a.iter().enumerate().find_map(|(i, item)| {
                    let details = schema.check(Some(item));
                    (!details.is_empty()).then(|| {
                        doc! {
                            "reason": "At least one item did not match the sub-schema",
                            "itemIndex": i as i32, "details": details,
                        }
                    })
                })
            }
            Rule::MinItems(n) | Rule::MaxItems(n) => {
                let Some(Bson::Array(a)) = v else { return None };
                let ok = if matches!(self, Rule::MinItems(_)) {
                    a.len() >= *n
                } else {
                    a.len() <= *n
                };
                (!ok).then(|| considered("array did not match specified length", v.unwrap()))
            }
            Rule::UniqueItems => {
                let Some(Bson::Array(a)) = v else { return None };
                let dup = a.iter().enumerate().find(|(i, x)| {
                    a[..*i]
                        .iter()
                        .any(|y| compare_values(x, y) == Ordering::Equal)
                });
                dup.map(|(_, x)| doc! {"reason": "found a duplicate item", "consideredValue": v.unwrap().clone(), "duplicatedValue": x.clone()})
            }
            Rule::MinProperties(n) | Rule::MaxProperties(n) => {
                let Some(Bson::Document(d)) = v else {
                    return None;
                };
                let ok = if matches!(self, Rule::MinProperties(_)) {
                    d.len() >= *n
                } else {
                    d.len() <= *n
                };
                (!ok).then(|| {
                    doc! {
                        "reason": "specified number of properties was not satisfied",
                        "numberOfProperties": d.len() as i32,
                    }
                })
            }
            Rule::AllOf(list) => {
                let failed: Vec<Document> = list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| {
                        let details = s.check(v);
                        (!details.is_empty()).then(|| doc! {"index": i as i32, "details": details})
                    })
                    .collect();
                (!failed.is_empty()).then(|| doc! {"schemasNotSatisfied": failed})
            }
            Rule::AnyOf(list) => {
                if list.iter().any(|s| s.check(v).is_empty()) {
                    return None;
                }
                let failed: Vec<Document> = list
                    .iter()
                    .enumerate()
                    .map(|(i, s)| doc! {"index": i as i32, "details": s.check(v)})
                    .collect();
                Some(doc! {"schemasNotSatisfied": failed})
            }
            Rule::OneOf(list) => {
                let passing: Vec<i32> = list
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.check(v).is_empty())
                    .map(|(i, _)| i as i32)
                    .collect();
                match passing.len() {
                    1 => None,
                    0 => Some(doc! {"schemasNotSatisfied": list.iter().enumerate()
                    .map(|(i, s)| doc! {"index": i as i32, "details": s.check(v)}).collect::<Vec<_>>()}),
                    _ => Some(
                        doc! {"reason": "more than one subschema matched", "matchingSchemaIndexes": passing},
                    ),
                }
            }
            Rule::Not(schema) => schema
                .check(v)
                .is_empty()
                .then(|| doc! {"reason": "child expression matched"}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails(schema: Document, d: Document) -> Vec<Document> {
        Schema::parse(&schema).unwrap().failures(&d)
    }

    #[test]
    fn required_properties_and_types() {
        let schema = doc! {
            "bsonType": "object", "required": ["name", "age"],
            "properties": {"age": {"bsonType": "int", "minimum": 0}, "name": {"bsonType": "string"}},
        };
        assert!(fails(schema.clone(), doc! {"name": "a", "age": 3}).is_empty());
        let f = fails(schema.clone(), doc! {"name": "a"});
        assert_eq!(
            f,
            vec![
                doc! {"operatorName": "required", "specifiedAs": {"required": ["name", "age"]},
                "missingProperties": ["age"]}
            ]
        );
        let f = fails(schema, doc! {"name": "a", "age": -1});
        assert_eq!(f[0].get_str("operatorName").unwrap(), "properties");
        let prop = &f[0].get_array("propertiesNotSatisfied").unwrap()[0];
        let prop = prop.as_document().unwrap();
        assert_eq!(prop.get_str("propertyName").unwrap(), "age");
        let detail = prop.get_array("details").unwrap()[0].as_document().unwrap();
        assert_eq!(detail.get_str("operatorName").unwrap(), "minimum");
        assert_eq!(detail.get_str("reason").unwrap(), "comparison failed");
    }

    #[test]
    fn keywords_ignore_values_they_do_not_apply_to() {
        let schema = doc! {"properties": {"x": {"minimum": 5, "minLength": 2}}};
        assert!(fails(schema.clone(), doc! {"x": "abc"}).is_empty());
        assert!(fails(schema.clone(), doc! {"x": 7}).is_empty());
        assert!(fails(schema.clone(), doc! {}).is_empty());
        assert_eq!(fails(schema, doc! {"x": "a"}).len(), 1);
    }

    #[test]
    fn additional_properties_and_combinators() {
        let schema = doc! {"properties": {"_id": {}, "a": {}}, "additionalProperties": false};
        let f = fails(schema, doc! {"_id": 1, "a": 1, "b": 2});
        assert_eq!(
            f[0].get_array("additionalProperties").unwrap(),
            &vec![Bson::from("b")]
        );
        let any = doc! {"anyOf": [{"required": ["a"]}, {"required": ["b"]}]};
        assert!(fails(any.clone(), doc! {"b": 1}).is_empty());
        assert_eq!(fails(any, doc! {"c": 1}).len(), 1);
        let e = doc! {"properties": {"s": {"enum": ["x", "y"]}}};
        assert!(fails(e.clone(), doc! {"s": "y"}).is_empty());
        assert_eq!(fails(e, doc! {"s": "z"}).len(), 1);
    }

    #[test]
    fn bad_schemas_are_refused() {
        assert!(Schema::parse(&doc! {"type": "integer"}).is_err());
        assert!(Schema::parse(&doc! {"bsonType": "nope"}).is_err());
        assert!(Schema::parse(&doc! {"required": []}).is_err());
        assert!(Schema::parse(&doc! {"minLength": -1}).is_err());
        assert!(Schema::parse(&doc! {"frobnicate": 1}).is_err());
        assert!(Schema::parse(&doc! {"exclusiveMinimum": true}).is_err());
    }
}
