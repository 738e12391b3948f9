//! The one way the store runs SQL, on either backend: statements are written once, with `?N`
//! placeholders (SQLite's; PostgreSQL gets `$N`), over backend-neutral arguments ([`Arg`]) and
//! rows ([`Row`]). Every store method is then written once, for both backends, in the file of its
//! concern; only where the dialects differ does a statement ask [`Db::dialect`].

use async_trait::async_trait;

use super::error::StoreError;

/// The SQL dialect of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// An argument of a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Several texts: a `text[]` for PostgreSQL (`= ANY(?1)`), a JSON array for SQLite (`IN (SELECT
    /// value FROM json_each(?1))`).
    List(Vec<String>),
}

impl Arg {
    pub fn text(s: impl Into<String>) -> Arg {
        Arg::Text(s.into())
    }

    pub fn opt_text<S: Into<String>>(s: Option<S>) -> Arg {
        s.map_or(Arg::Null, |s| Arg::Text(s.into()))
    }

    pub fn opt_int(i: Option<i64>) -> Arg {
        i.map_or(Arg::Null, Arg::Int)
    }
}

/// A statement and its arguments.
pub type Stmt = (String, Vec<Arg>);

/// One value of a row, as either backend gives it.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Cell {
    #[default]
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

/// A row of a query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Cell>);

fn decode(i: usize, expected: &str, got: &Cell) -> StoreError {
    StoreError::Decode(format!("column {i}: expected {expected}, found {got:?}"))
}

impl Row {
    fn cell(&self, i: usize) -> &Cell {
        self.0.get(i).unwrap_or(&Cell::Null)
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.cell(i) {
            Cell::Null => Ok(None),
            Cell::Text(s) => Ok(Some(s.clone())),
            other => Err(decode(i, "text", other)),
        }
    }

    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?.ok_or_else(|| decode(i, "text", &Cell::Null))
    }

    /// As [`Row::text`], moved out of the row (which keeps a null there) rather than copied.
    pub fn take_text(&mut self, i: usize) -> Result<String, StoreError> {
        match self.0.get_mut(i).map(std::mem::take) {
            Some(Cell::Text(s)) => Ok(s),
            other => Err(decode(i, "text", &other.unwrap_or_default())),
        }
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.cell(i) {
            Cell::Null => Ok(None),
            Cell::Int(n) => Ok(Some(*n)),
            other => Err(decode(i, "an integer", other)),
        }
    }

    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?.ok_or_else(|| decode(i, "an integer", &Cell::Null))
    }

    /// A boolean: PostgreSQL's, or SQLite's 0 and 1.
    pub fn boolean(&self, i: usize) -> Result<bool, StoreError> {
        match self.cell(i) {
            Cell::Bool(b) => Ok(*b),
            Cell::Int(n) => Ok(*n != 0),
            other => Err(decode(i, "a boolean", other)),
        }
    }
}

/// What both backends do; everything else in the store is written over it.
#[async_trait]
pub trait Db: Send + Sync {
    fn dialect(&self) -> Dialect;
    /// The rows a query answers.
    async fn rows(&self, sql: &str, args: Vec<Arg>) -> Result<Vec<Row>, StoreError>;
    /// Runs one statement; how many rows it changed.
    async fn exec(&self, sql: &str, args: Vec<Arg>) -> Result<u64, StoreError>;
    /// Runs statements in one transaction, in order; how many rows each changed.
    async fn batch(&self, stmts: Vec<Stmt>) -> Result<Vec<u64>, StoreError>;
    /// [`Db::batch`] of `rest` after `first`, in one transaction, only if `first` changed a row;
    /// None (and nothing written) when it changed none.
    async fn batch_if(&self, first: Stmt, rest: Vec<Stmt>) -> Result<Option<Vec<u64>>, StoreError>;

    /// The first row a query answers, if any.
    async fn row(&self, sql: &str, args: Vec<Arg>) -> Result<Option<Row>, StoreError> {
        Ok(self.rows(sql, args).await?.into_iter().next())
    }
}

/// The store: a backend that runs SQL ([`db::Db`]); every method on `dyn Store` is written once,
/// in the file of its concern. Each is one short statement or transaction; none holds a lock
/// across another call.
pub trait Store: Db {
    /// The id of this server's `Project` (what Medplum clients expect a login to be in), made once.
    fn project_id(&self) -> &str;
}

/// `?N` placeholders as PostgreSQL writes them, `$N`. Statements hold no `?` of their own.
pub fn pg(sql: &str) -> String {
    sql.replace('?', "$")
}

/// The SQLite side: arguments bound, values read.
pub mod sqlite {
    use rusqlite::types::{ToSqlOutput, ValueRef};

    use super::{Arg, Cell, Row};

    impl rusqlite::ToSql for Arg {
        fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
            Ok(match self {
                Arg::Null => ToSqlOutput::from(rusqlite::types::Null),
                Arg::Text(s) => ToSqlOutput::from(s.as_str()),
                Arg::Int(i) => ToSqlOutput::from(*i),
                Arg::Float(f) => ToSqlOutput::from(*f),
                Arg::Bool(b) => ToSqlOutput::from(*b),
                Arg::List(v) => ToSqlOutput::from(serde_json::to_string(v).expect("texts serialize")),
            })
        }
    }

    /// A row read from SQLite.
    pub fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        let n = r.as_ref().column_count();
        let cells = (0..n)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(n) => Cell::Int(n),
                    ValueRef::Real(f) => Cell::Float(f),
                    ValueRef::Text(t) | ValueRef::Blob(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                })
            })
            .collect::<rusqlite::Result<Vec<Cell>>>()?;
        Ok(Row(cells))
    }
}

/// The PostgreSQL side: arguments bound to whatever integer width a column has, values read by
/// their column's type.
pub mod postgres {
    use std::error::Error;

    use bytes::BytesMut;
    use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

    use super::{Arg, Cell, Row};
    use crate::store::error::StoreError;

    impl ToSql for Arg {
        fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
            match self {
                Arg::Null => Ok(IsNull::Yes),
                Arg::Text(s) => s.to_sql(ty, out),
                Arg::Int(i) => match *ty {
                    Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                    Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                    Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                    _ => i.to_sql(ty, out),
                },
                Arg::Float(f) => f.to_sql(ty, out),
                Arg::Bool(b) => b.to_sql(ty, out),
                Arg::List(v) => v.to_sql(ty, out),
            }
        }

        fn accepts(_: &Type) -> bool {
            true
        }

        to_sql_checked!();
    }

    /// A row read from PostgreSQL.
    pub fn row(r: &tokio_postgres::Row) -> Result<Row, StoreError> {
        let cells = r
            .columns()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let cell = match *c.type_() {
                    Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map(|n| Cell::Int(n.into())),
                    Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map(|n| Cell::Int(n.into())),
                    Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Cell::Int),
                    Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?.map(Cell::Float),
                    Type::BOOL => r.try_get::<_, Option<bool>>(i)?.map(Cell::Bool),
                    _ => r.try_get::<_, Option<String>>(i)?.map(Cell::Text),
                };
                Ok(cell.unwrap_or(Cell::Null))
            })
            .collect::<Result<Vec<Cell>, tokio_postgres::Error>>()?;
        Ok(Row(cells))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_cells() {
        assert_eq!(
            pg("SELECT a FROM t WHERE id = ?1 AND b IN (?2, ?3)"),
            "SELECT a FROM t WHERE id = $1 AND b IN ($2, $3)"
        );
        let r = Row(vec![Cell::Text("x".into()), Cell::Null, Cell::Int(1), Cell::Bool(false)]);
        assert_eq!(r.text(0).unwrap(), "x");
        assert_eq!(r.opt_text(1).unwrap(), None);
        assert!(r.text(1).is_err());
        assert!(r.boolean(2).unwrap() && !r.boolean(3).unwrap());
        assert!(r.int(0).unwrap_err().to_string().contains("column 0: expected an integer"));
    }
}
