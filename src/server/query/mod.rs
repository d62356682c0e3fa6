//! TEMPORARY interface stub, replaced by the query engine module.
use crate::server::error::{ServerError, ServerResult};
use bson::{Bson, Document};
use std::cmp::Ordering;

fn type_rank(b: &Bson) -> u8 {
    match b {
        Bson::MinKey => 0,
        Bson::Null | Bson::Undefined => 1,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 2,
        Bson::String(_) | Bson::Symbol(_) => 3,
        Bson::Document(_) => 4,
        Bson::Array(_) => 5,
        Bson::Binary(_) => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Timestamp(_) => 10,
        Bson::RegularExpression(_) => 11,
        Bson::MaxKey => 13,
        _ => 12,
    }
}
fn num(b: &Bson) -> f64 {
    match b {
        Bson::Int32(i) => *i as f64,
        Bson::Int64(i) => *i as f64,
        Bson::Double(d) => *d,
        _ => 0.0,
    }
}
pub fn compare_values(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Bson::String(x), Bson::String(y)) => x.cmp(y),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        _ if ra == 2 => num(a).partial_cmp(&num(b)).unwrap_or(Ordering::Equal),
        _ => format!("{a:?}").cmp(&format!("{b:?}")),
    }
}
pub fn values_equal(a: &Bson, b: &Bson) -> bool {
    compare_values(a, b) == Ordering::Equal
}
#[derive(Clone, Debug)]
pub struct KeyValue(pub Bson);
impl PartialEq for KeyValue {
    fn eq(&self, o: &Self) -> bool {
        compare_values(&self.0, &o.0) == Ordering::Equal
    }
}
impl Eq for KeyValue {}
impl PartialOrd for KeyValue {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for KeyValue {
    fn cmp(&self, o: &Self) -> Ordering {
        compare_values(&self.0, &o.0)
    }
}
pub fn get_path<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut cur: Option<&Bson> = None;
    let mut d = doc;
    for (i, part) in path.split('.').enumerate() {
        if i > 0 {
            match cur? {
                Bson::Document(x) => d = x,
                _ => return None,
            }
        }
        cur = d.get(part);
    }
    cur
}
pub struct Matcher(Document);
impl Matcher {
    pub fn new(filter: &Document) -> ServerResult<Matcher> {
        Ok(Matcher(filter.clone()))
    }
    pub fn matches(&self, doc: &Document) -> bool {
        self.0.iter().all(|(k, v)| match v {
            Bson::Document(ops) if ops.keys().next().map_or(false, |k| k.starts_with('$')) => {
                let got = get_path(doc, k);
                ops.iter().all(|(op, val)| match (op.as_str(), got) {
                    ("$gt", Some(g)) => compare_values(g, val) == Ordering::Greater,
                    ("$gte", Some(g)) => compare_values(g, val) != Ordering::Less,
                    ("$lt", Some(g)) => compare_values(g, val) == Ordering::Less,
                    ("$eq", Some(g)) => values_equal(g, val),
                    _ => false,
                })
            }
            _ => get_path(doc, k).map_or(false, |g| values_equal(g, v)),
        })
    }
    pub fn id_equality(&self) -> Option<&Bson> {
        match self.0.get("_id") {
            Some(Bson::Document(_)) | None => None,
            Some(v) => Some(v),
        }
    }
}
pub struct SortSpec(Document);
impl SortSpec {
    pub fn new(spec: &Document) -> ServerResult<SortSpec> {
        Ok(SortSpec(spec.clone()))
    }
    pub fn compare(&self, a: &Document, b: &Document) -> Ordering {
        for (k, dir) in &self.0 {
            let null = Bson::Null;
            let o = compare_values(
                get_path(a, k).unwrap_or(&null),
                get_path(b, k).unwrap_or(&null),
            );
            let o = if num(dir) < 0.0 { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }
    pub fn natural(&self) -> Option<i32> {
        self.0
            .get("$natural")
            .map(|v| if num(v) < 0.0 { -1 } else { 1 })
    }
}
pub struct Projection(Document);
impl Projection {
    pub fn new(spec: &Document) -> ServerResult<Projection> {
        Ok(Projection(spec.clone()))
    }
    pub fn apply(&self, doc: &Document) -> Document {
        doc.clone()
    }
}
pub fn run_pipeline(input: Vec<Document>, pipeline: &[Document]) -> ServerResult<Vec<Document>> {
    let _ = pipeline;
    let _ = ServerError::bad_value("");
    Ok(input)
}
