//! Link identity. A link's id names it in logs and status, is the `_id` of its checkpoint on
//! the destination and of its document in `__mmm.links`, so it depends only on its two
//! endpoints. Pure logic.

use crate::oplog::NsPattern;

/// `src/src_ns->dst/dst_ns`, e.g. `factory/vision.*->cloud/vision.*`.
pub fn link_id(src: &str, src_ns: &NsPattern, dst: &str, dst_ns: &NsPattern) -> String {
    format!("{src}/{src_ns}->{dst}/{dst_ns}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_both_endpoints() {
        let p = |s| NsPattern::parse(s).unwrap();
        assert_eq!(link_id("a", &p("db.*"), "b", &p("db.*")), "a/db.*->b/db.*");
        assert_eq!(link_id("a", &p("*"), "b", &p("*")), "a/*->b/*");
    }
}
