//! User variables: `let` on find, aggregate, update, delete and findAndModify (MongoDB 5.0+),
//! and `$$new` in a `$merge` pipeline. Their values are constants (each `let` expression is
//! evaluated once, before the command runs), so a pipeline that refers to them is rewritten with
//! the values in place (`{$literal: <value>}`) before it is parsed.

use crate::server::error::{ServerError, ServerResult};
use crate::server::query::expr::Expr;
use crate::server::query::get_path;
use bson::{doc, Bson, Document};

/// `variableValidation::validateNameForUserWrite`: a user variable starts with a lowercase
/// letter (or a non-ASCII character) and holds only letters, digits and `_`.
fn validate_name(name: &str) -> ServerResult<()> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err(ServerError::location(
            16866,
            "empty variable names are not allowed",
        ));
    };
    if !(first.is_ascii_lowercase() || !first.is_ascii()) {
        return Err(ServerError::location(
            16867,
            format!("'{name}' starts with an invalid character for a user variable name"),
        ));
    }
    if chars.any(|c| c.is_ascii() && !(c.is_ascii_alphanumeric() || c == '_')) {
        return Err(ServerError::location(
            16868,
            format!("'{name}' contains an invalid character for a variable name: '{name}'"),
        ));
    }
    Ok(())
}

/// The values of a `let` document: each expression evaluated with no current document.
pub fn evaluate(lets: &Document) -> ServerResult<Document> {
    evaluate_on(lets, &Document::new())
}

/// The values of a `let` document evaluated against `current` (`$merge` evaluates its `let`
/// for each document it writes).
pub fn evaluate_on(lets: &Document, current: &Document) -> ServerResult<Document> {
    let mut out = Document::new();
    for (name, expr) in lets {
        validate_name(name)?;
        let value = Expr::parse(&substitute(expr, &out))?.eval(current)?;
        out.insert(name.clone(), value.unwrap_or(Bson::Null));
    }
    Ok(out)
}

/// The `let` argument of a command, evaluated (`None` when absent).
pub fn command_let(body: &Document) -> ServerResult<Option<Document>> {
    match body.get("let") {
        None => Ok(None),
        Some(Bson::Document(d)) => evaluate(d).map(Some),
        Some(_) => Err(ServerError::type_mismatch(
            "BSON field 'let' is the wrong type, expected type 'object'",
        )),
    }
}

/// A pipeline with references to `vars` replaced by their values. `$match` filters are left
/// alone: outside `$expr` a `"$$name"` there is a plain string.
pub fn substitute_pipeline(stages: &[Document], vars: &Document) -> Vec<Document> {
    if vars.is_empty() {
        return stages.to_vec();
    }
    stages
        .iter()
        .map(|stage| match stage.keys().next().map(String::as_str) {
            Some("$match") => stage.clone(),
            _ => match substitute(&Bson::Document(stage.clone()), vars) {
                Bson::Document(d) => d,
                _ => stage.clone(),
            },
        })
        .collect()
}

fn substitute(value: &Bson, vars: &Document) -> Bson {
    match value {
        Bson::String(s) if s.starts_with("$$") => {
            let path = &s[2..];
            let (name, rest) = match path.split_once('.') {
                Some((n, r)) => (n, Some(r)),
                None => (path, None),
            };
            let Some(v) = vars.get(name) else {
                return value.clone();
            };
            let resolved = match (rest, v) {
                (None, v) => Some(v.clone()),
                (Some(r), Bson::Document(d)) => get_path(d, r).cloned(),
                _ => None,
            };
            match resolved {
                Some(v) => Bson::Document(doc! {"$literal": v}),
                None => Bson::String("$$REMOVE".into()),
            }
        }
        Bson::Document(d) => {
            if d.keys().next().is_some_and(|k| k == "$literal") {
                return value.clone();
            }
            Bson::Document(
                d.iter()
                    .map(|(k, v)| (k.clone(), substitute(v, vars)))
                    .collect(),
            )
        }
        Bson::Array(items) => Bson::Array(items.iter().map(|v| substitute(v, vars)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn let_values_are_evaluated_once_and_substituted() {
        let vars = evaluate(&doc! {"a": {"$add": [1, 2]}, "b": "$$a"}).unwrap();
        assert_eq!(vars, doc! {"a": 3, "b": 3});
        let p = substitute_pipeline(
            &[
                doc! {"$match": {"x": "$$a"}},
                doc! {"$set": {"y": "$$a", "z": {"$add": ["$$b", 1]}, "w": "$$a.q"}},
            ],
            &vars,
        );
        assert_eq!(p[0], doc! {"$match": {"x": "$$a"}});
        assert_eq!(
            p[1],
            doc! {"$set": {"y": {"$literal": 3}, "z": {"$add": [{"$literal": 3}, 1]}, "w": "$$REMOVE"}}
        );
    }

    #[test]
    fn user_variable_names_are_checked() {
        assert_eq!(evaluate(&doc! {"Bad": 1}).unwrap_err().code, 16867);
        assert_eq!(evaluate(&doc! {"a-b": 1}).unwrap_err().code, 16868);
        assert_eq!(evaluate(&doc! {"": 1}).unwrap_err().code, 16866);
    }
}
