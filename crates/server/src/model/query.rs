//! What an `Agent` search asks for, already validated: the store turns it into SQL
//! (`store::sql`), the REST API reads it from a query string (`api::search`).

/// How a `name` search matches (FHIR string search: prefix by default, `:exact`, `:contains`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NameMatch {
    /// Case-insensitive prefix.
    Prefix,
    /// The whole name, case-sensitive.
    Exact,
    /// Case-insensitive substring.
    Contains,
}

/// A token search (`status`, `identifier`): any of the values, or none of them with `:not`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenFilter<T> {
    pub any_of: Vec<T>,
    pub not: bool,
}

/// One `_lastUpdated` comparison on instants written as `YYYY-MM-DDThh:mm:ss.sssZ`: the value's
/// precision is the range `[low, high)`, and each FHIR prefix compares against that range.
#[derive(Debug, Clone, PartialEq)]
pub struct InstantFilter {
    pub prefix: DatePrefix,
    pub low: String,
    pub high: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DatePrefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
}

/// What a search sorts by (`_sort`), each ascending or descending.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SortKey {
    Name,
    Status,
    Identifier,
    LastUpdated,
}

/// Search criteria for `Agent` (already validated). Criteria on different parameters all apply.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AgentQuery {
    pub ids: Option<Vec<String>>,
    pub names: Vec<(NameMatch, String)>,
    pub status: Option<TokenFilter<String>>,
    /// (system, value) pairs; a `None` system matches any.
    pub identifier: Option<TokenFilter<(Option<String>, String)>>,
    pub last_updated: Vec<InstantFilter>,
    /// (key, descending); the id always breaks ties so that pages are stable.
    pub sort: Vec<(SortKey, bool)>,
    pub count: usize,
    /// Leave out counting every match (bulk operations need the page only); the total returned
    /// is then the page's length.
    pub skip_total: bool,
    pub offset: usize,
}
