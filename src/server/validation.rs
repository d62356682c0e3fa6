//! Document validators (`validator`, `validationLevel`, `validationAction` of `create` and
//! `collMod`), enforced on inserts and updates unless the command sets
//! `bypassDocumentValidation`. A failure is `DocumentValidationFailure` (121) with `errInfo`
//! `{failingDocumentId, details}` as mongod 5.0+ reports it (mongodb/mongo
//! `src/mongo/db/matcher/doc_validation_error.cpp`); with `validationAction: "warn"` the write
//! goes through and the failure is logged.

use crate::server::error::{ErrorCode, ServerError, ServerResult};
use crate::server::query::json_schema::Schema;
use crate::server::query::Matcher;
use bson::{doc, Bson, Document};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Level {
    Off,
    Strict,
    /// Updates of documents that already fail the validator are not checked.
    Moderate,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    Error,
    Warn,
}

/// One top-level condition of the validator: `$jsonSchema`, or a query clause.
#[derive(Debug, Clone)]
enum Clause {
    Schema(Schema),
    Query {
        spec: Document,
        matcher: Matcher,
    },
    /// `$and`/`$or`/`$nor` over conditions of which some use `$jsonSchema` (the query matcher
    /// evaluates the others).
    Logical {
        op: String,
        children: Vec<Vec<Clause>>,
    },
}

/// Whether a validator condition uses `$jsonSchema` anywhere below.
fn uses_schema(v: &Bson) -> bool {
    // Bounded: a validator arrived in a message, at most 200 levels deep.
    match v {
        Bson::Document(d) => d.iter().any(|(k, v)| k == "$jsonSchema" || uses_schema(v)),
        Bson::Array(a) => a.iter().any(uses_schema),
        _ => false,
    }
}

/// The top-level conditions of a validator document.
fn parse_clauses(spec: &Document) -> ServerResult<Vec<Clause>> {
    let mut clauses = Vec::new();
    for (key, value) in spec {
        match (key.as_str(), value) {
            ("$jsonSchema", Bson::Document(s)) => clauses.push(Clause::Schema(Schema::parse(s)?)),
            ("$jsonSchema", _) => {
                return Err(ServerError::type_mismatch("$jsonSchema must be an object"))
            }
            ("$where" | "$near" | "$nearSphere" | "$text" | "$expr", _) => {
                return Err(ServerError::invalid_options(format!(
                    "{key} is not allowed in collection validators"
                )))
            }
            ("$and" | "$or" | "$nor", Bson::Array(items)) if uses_schema(value) => {
                let children = items
                    .iter()
                    .map(|item| match item {
                        Bson::Document(d) => parse_clauses(d),
                        _ => Err(ServerError::bad_value(
                            "$or/$and/$nor entries need to be full objects",
                        )),
                    })
                    .collect::<ServerResult<Vec<_>>>()?;
                if children.is_empty() {
                    return Err(ServerError::bad_value(
                        "$and/$or/$nor must be a nonempty array",
                    ));
                }
                clauses.push(Clause::Logical {
                    op: key.clone(),
                    children,
                });
            }
            _ => {
                let mut clause = Document::new();
                clause.insert(key.clone(), value.clone());
                let matcher = Matcher::new(&clause)?;
                clauses.push(Clause::Query {
                    spec: clause,
                    matcher,
                });
            }
        }
    }
    Ok(clauses)
}

fn all_pass(clauses: &[Clause], doc: &Document) -> bool {
    clauses.iter().all(|c| c.passes(doc))
}

impl Clause {
    fn passes(&self, doc: &Document) -> bool {
        match self {
            Clause::Schema(s) => s.failures(doc).is_empty(),
            Clause::Query { matcher, .. } => matcher.matches(doc),
            Clause::Logical { op, children } => match op.as_str() {
                "$and" => children.iter().all(|c| all_pass(c, doc)),
                "$or" => children.iter().any(|c| all_pass(c, doc)),
                _ => !children.iter().any(|c| all_pass(c, doc)),
            },
        }
    }

    /// `errInfo` details of a clause that does not pass.
    fn details(&self, doc: &Document) -> Document {
        match self {
            Clause::Schema(s) => {
                doc! {"operatorName": "$jsonSchema", "schemaRulesNotSatisfied": s.failures(doc)}
            }
            Clause::Query { spec, .. } => query_details(spec, doc),
            Clause::Logical { op, children } => {
                // $and and $or report the clauses that failed; $nor the ones that matched.
                let reported = |c: &Vec<Clause>| {
                    if op == "$nor" {
                        all_pass(c, doc)
                    } else {
                        !all_pass(c, doc)
                    }
                };
                let clauses: Vec<Document> = children
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| reported(c))
                    .map(|(i, c)| doc! {"index": i as i32, "details": group_details(c, doc)})
                    .collect();
                doc! {"operatorName": op.clone(), "clausesNotSatisfied": clauses}
            }
        }
    }
}

/// Details of a group of conditions: the one failing condition, or an `$and` of the failing ones.
fn group_details(clauses: &[Clause], doc: &Document) -> Document {
    let failing: Vec<(usize, &Clause)> = clauses
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.passes(doc))
        .collect();
    if clauses.len() == 1 {
        return failing
            .first()
            .map(|(_, c)| c.details(doc))
            .unwrap_or_default();
    }
    doc! {
        "operatorName": "$and",
        "clausesNotSatisfied": failing
            .into_iter()
            .map(|(i, c)| doc! {"index": i as i32, "details": c.details(doc)})
            .collect::<Vec<_>>(),
    }
}

#[derive(Debug, Clone)]
pub struct Validator {
    clauses: Vec<Clause>,
    pub level: Level,
    pub action: Action,
}

/// Parses `validationLevel`.
pub fn parse_level(v: Option<&Bson>) -> ServerResult<Level> {
    match v {
        None => Ok(Level::Strict),
        Some(Bson::String(s)) => match s.as_str() {
            "off" => Ok(Level::Off),
            "strict" => Ok(Level::Strict),
            "moderate" => Ok(Level::Moderate),
            other => Err(ServerError::bad_value(format!(
                "Enumeration value '{other}' for field 'validationLevel' is not a valid value."
            ))),
        },
        Some(_) => Err(ServerError::type_mismatch(
            "BSON field 'validationLevel' is the wrong type, expected type 'string'",
        )),
    }
}

/// Parses `validationAction`.
pub fn parse_action(v: Option<&Bson>) -> ServerResult<Action> {
    match v {
        None => Ok(Action::Error),
        Some(Bson::String(s)) => match s.as_str() {
            "error" => Ok(Action::Error),
            "warn" => Ok(Action::Warn),
            other => Err(ServerError::bad_value(format!(
                "Enumeration value '{other}' for field 'validationAction' is not a valid value."
            ))),
        },
        Some(_) => Err(ServerError::type_mismatch(
            "BSON field 'validationAction' is the wrong type, expected type 'string'",
        )),
    }
}

impl Validator {
    /// The validator a collection's options describe (`None`: no validator, or an empty one).
    pub fn from_options(options: &Document) -> ServerResult<Option<Validator>> {
        let level = parse_level(options.get("validationLevel"))?;
        let action = parse_action(options.get("validationAction"))?;
        let spec = match options.get("validator") {
            None => return Ok(None),
            Some(Bson::Document(d)) => d,
            Some(_) => {
                return Err(ServerError::type_mismatch(
                    "BSON field 'validator' is the wrong type, expected type 'object'",
                ))
            }
        };
        if spec.is_empty() {
            return Ok(None);
        }
        let clauses = parse_clauses(spec)?;
        Ok(Some(Validator {
            clauses,
            level,
            action,
        }))
    }

    fn passes(&self, doc: &Document) -> bool {
        all_pass(&self.clauses, doc)
    }

    /// `errInfo.details` for a document that fails: one clause's details, or an `$and` of them.
    fn details(&self, doc: &Document) -> Document {
        group_details(&self.clauses, doc)
    }
}

/// Details of one failing query clause `{field: ...}` or `{$or: [...]}`.
fn query_details(spec: &Document, doc: &Document) -> Document {
    let Some((key, value)) = spec.iter().next() else {
        return Document::new();
    };
    if key.starts_with('$') {
        return doc! {"operatorName": key.clone(), "specifiedAs": spec.clone(), "reason": "expression did not match"};
    }
    let operator = match value {
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => {
            d.keys().next().cloned().unwrap()
        }
        _ => "$eq".to_string(),
    };
    let mut out = doc! {"operatorName": operator, "specifiedAs": spec.clone()};
    match crate::server::query::get_path(doc, key) {
        Some(v) => {
            out.insert("reason", "comparison failed");
            out.insert("consideredValue", v.clone());
        }
        None => {
            out.insert("reason", "field was missing");
        }
    }
    out
}

/// Checks a document a write is about to store. `old`: the document an update replaces (for
/// `validationLevel: "moderate"`); `bypass`: the command's `bypassDocumentValidation`.
pub fn check_write(
    validator: Option<&Validator>,
    ns: &str,
    new: &Document,
    old: Option<&Document>,
    bypass: bool,
) -> ServerResult<()> {
    let Some(v) = validator else {
        return Ok(());
    };
    if bypass || v.level == Level::Off {
        return Ok(());
    }
    if v.level == Level::Moderate && old.is_some_and(|o| !v.passes(o)) {
        return Ok(());
    }
    if v.passes(new) {
        return Ok(());
    }
    let id = new.get("_id").cloned().unwrap_or(Bson::Null);
    let err_info = doc! {"failingDocumentId": id.clone(), "details": v.details(new)};
    if v.action == Action::Warn {
        log::warn!(target: "mmm", "Document would fail validation: namespace {ns}, _id {id}, errInfo {err_info}");
        return Ok(());
    }
    Err(ServerError::new(
        ErrorCode::DocumentValidationFailure,
        "Document failed validation",
    )
    .with_extra(doc! {"errInfo": err_info}))
}
