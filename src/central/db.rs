//! The central's store boundary: one connection type for every statement the
//! central runs, so the same central code can run on an SQLite file (the
//! embedded default) or, for deployments that outgrow one file, on another
//! engine behind the same calls (issue 31).
//!
//! The calls mirror rusqlite's (`execute`, `query_row`, `prepare_cached`,
//! `query_map`, `optional`): the central was written against them and keeps
//! reading the same way. What must hold across engines, and so is all this
//! module lets through:
//! - parameters are numbered (`?1`, `?2`…) and are integers, reals, text,
//!   bytes or NULL ([`Param`]); a boolean is an integer 0/1, as SQLite stores it;
//! - a column is read as one of those and converted on read ([`FromSql`]);
//! - a write transaction takes the engine's write lock at its start
//!   ([`Connection::write_transaction`]); a read transaction sees one snapshot.

use std::fmt;
use std::path::Path;

/// The store's errors: what the engine said, or a value of the wrong kind.
#[derive(Debug)]
pub enum Error {
    Sqlite(rusqlite::Error),
    /// A query that must return a row returned none.
    NoRows,
    /// A column held a value the caller cannot take (a NULL for a number, text
    /// for an integer).
    Conversion(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sqlite(e) => e.fmt(f),
            Error::NoRows => f.write_str("query returned no rows"),
            Error::Conversion(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Sqlite(e) => Some(e),
            Error::NoRows | Error::Conversion(_) => None,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::QueryReturnedNoRows => Error::NoRows,
            rusqlite::Error::FromSqlConversionFailure(i, t, e) => {
                Error::Conversion(format!("column {i} ({t}): {e}"))
            }
            rusqlite::Error::InvalidColumnType(i, name, t) => {
                Error::Conversion(format!("column {i} ({name}) holds {t}"))
            }
            e => Error::Sqlite(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `query_row(…).optional()`: no row is `None`, not an error.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

// ---- parameters -------------------------------------------------------------------

/// A statement parameter as every engine takes it.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// A value that can be a statement parameter.
pub trait ToSql {
    fn to_param(&self) -> Param<'_>;
}

macro_rules! int_to_sql {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn to_param(&self) -> Param<'_> {
                Param::Int(*self as i64)
            }
        }
    )*};
}
int_to_sql!(i64, i32, u32, u16, u8, usize, u64);

impl ToSql for bool {
    fn to_param(&self) -> Param<'_> {
        Param::Int(*self as i64)
    }
}
impl ToSql for f64 {
    fn to_param(&self) -> Param<'_> {
        Param::Real(*self)
    }
}
impl ToSql for str {
    fn to_param(&self) -> Param<'_> {
        Param::Text(self)
    }
}
impl ToSql for String {
    fn to_param(&self) -> Param<'_> {
        Param::Text(self)
    }
}
impl ToSql for [u8] {
    fn to_param(&self) -> Param<'_> {
        Param::Bytes(self)
    }
}
impl ToSql for Vec<u8> {
    fn to_param(&self) -> Param<'_> {
        Param::Bytes(self)
    }
}
impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_param(&self) -> Param<'_> {
        (**self).to_param()
    }
}
impl<T: ToSql> ToSql for Option<T> {
    fn to_param(&self) -> Param<'_> {
        match self {
            Some(v) => v.to_param(),
            None => Param::Null,
        }
    }
}
impl ToSql for Param<'_> {
    fn to_param(&self) -> Param<'_> {
        *self
    }
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Param::Null => ValueRef::Null,
            Param::Int(i) => ValueRef::Integer(i),
            Param::Real(r) => ValueRef::Real(r),
            Param::Text(s) => ValueRef::Text(s.as_bytes()),
            Param::Bytes(b) => ValueRef::Blob(b),
        }))
    }
}

/// A statement's parameters: `[]`, `[a]`, `[a, b]` of one type, or
/// [`params!`] for mixed types.
pub trait Params {
    fn each(&self, f: &mut dyn FnMut(Param<'_>));
}

// Arrays of one to sixteen values of one type; `[]` alone is the empty list
// (one impl for length 0, so the literal needs no annotation).
macro_rules! array_params {
    ($($n:literal)*) => {$(
        impl<T: ToSql> Params for [T; $n] {
            fn each(&self, f: &mut dyn FnMut(Param<'_>)) {
                for p in self {
                    f(p.to_param())
                }
            }
        }
    )*};
}
array_params!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
impl Params for [&dyn ToSql; 0] {
    fn each(&self, _: &mut dyn FnMut(Param<'_>)) {}
}
impl Params for &[&dyn ToSql] {
    fn each(&self, f: &mut dyn FnMut(Param<'_>)) {
        for p in self.iter() {
            f(p.to_param())
        }
    }
}
impl<const N: usize> Params for &[&dyn ToSql; N] {
    fn each(&self, f: &mut dyn FnMut(Param<'_>)) {
        for p in self.iter() {
            f(p.to_param())
        }
    }
}
impl Params for () {
    fn each(&self, _: &mut dyn FnMut(Param<'_>)) {}
}

/// Mixed-type parameters, as rusqlite's `params!`.
#[macro_export]
macro_rules! central_params {
    () => { &[] as &[&dyn $crate::central::db::ToSql] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::central::db::ToSql),+] as &[&dyn $crate::central::db::ToSql] };
}
pub use crate::central_params as params;

fn bind(stmt: &mut rusqlite::Statement<'_>, p: &dyn Params) -> Result<()> {
    let mut i = 0;
    let mut err = None;
    p.each(&mut |v| {
        i += 1;
        if err.is_none() {
            if let Err(e) = stmt.raw_bind_parameter(i, v) {
                err = Some(e);
            }
        }
    });
    match err {
        Some(e) => Err(e.into()),
        None if i != stmt.parameter_count() => Err(Error::Sqlite(
            rusqlite::Error::InvalidParameterCount(i, stmt.parameter_count()),
        )),
        None => Ok(()),
    }
}

// ---- columns ----------------------------------------------------------------------

/// A value a column can be read as.
pub trait FromSql: Sized {
    fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Result<Self>;
}

fn kind(v: rusqlite::types::ValueRef<'_>) -> &'static str {
    match v.data_type() {
        rusqlite::types::Type::Null => "NULL",
        rusqlite::types::Type::Integer => "an integer",
        rusqlite::types::Type::Real => "a real",
        rusqlite::types::Type::Text => "text",
        rusqlite::types::Type::Blob => "bytes",
    }
}

fn wrong<T>(v: rusqlite::types::ValueRef<'_>, want: &str) -> Result<T> {
    Err(Error::Conversion(format!(
        "a column holds {} where {want} was expected",
        kind(v)
    )))
}

macro_rules! int_from_sql {
    ($($t:ty),*) => {$(
        impl FromSql for $t {
            fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Result<Self> {
                match v {
                    rusqlite::types::ValueRef::Integer(i) => <$t>::try_from(i).map_err(|_| {
                        Error::Conversion(format!("{i} is out of range for {}", stringify!($t)))
                    }),
                    v => wrong(v, "an integer"),
                }
            }
        }
    )*};
}
int_from_sql!(i64, i32, u32, u64, usize);

impl FromSql for bool {
    fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Result<Self> {
        match v {
            rusqlite::types::ValueRef::Integer(i) => Ok(i != 0),
            v => wrong(v, "a boolean"),
        }
    }
}
impl FromSql for f64 {
    fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Result<Self> {
        match v {
            rusqlite::types::ValueRef::Integer(i) => Ok(i as f64),
            rusqlite::types::ValueRef::Real(r) => Ok(r),
            v => wrong(v, "a number"),
        }
    }
}
impl FromSql for String {
    fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Result<Self> {
        match v {
            rusqlite::types::ValueRef::Text(t) => std::str::from_utf8(t)
                .map(str::to_owned)
                .map_err(|e| Error::Conversion(format!("text that is not UTF-8: {e}"))),
            v => wrong(v, "text"),
        }
    }
}
impl FromSql for Vec<u8> {
    fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Result<Self> {
        match v {
            rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => {
                Ok(b.to_vec())
            }
            v => wrong(v, "bytes"),
        }
    }
}
impl<T: FromSql> FromSql for Option<T> {
    fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Result<Self> {
        match v {
            rusqlite::types::ValueRef::Null => Ok(None),
            v => T::from_sqlite(v).map(Some),
        }
    }
}

/// A column's position (from 0). Only `usize`, so a literal `r.get(0)` needs no suffix.
pub trait ColumnIndex {
    fn index(self) -> usize;
}
impl ColumnIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// A result row.
pub struct Row<'a> {
    r: &'a rusqlite::Row<'a>,
}

impl Row<'_> {
    /// Column `i` (from 0) as a `T`.
    pub fn get<I: ColumnIndex, T: FromSql>(&self, i: I) -> Result<T> {
        let i = i.index();
        T::from_sqlite(self.r.get_ref(i)?).map_err(|e| match e {
            Error::Conversion(m) => Error::Conversion(format!("column {i}: {m}")),
            e => e,
        })
    }
}

/// The rows of a query, one at a time (the statement stays open while they are read).
pub struct Rows<'s> {
    rows: rusqlite::Rows<'s>,
}

impl<'s> Rows<'s> {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Row<'_>>> {
        Ok(self.rows.next()?.map(|r| Row { r }))
    }
}

/// [`Stmt::query_map`]'s rows, each mapped by the caller's function.
pub struct MappedRows<'s, F> {
    rows: Rows<'s>,
    f: F,
}

impl<T, F: FnMut(&Row<'_>) -> Result<T>> Iterator for MappedRows<'_, F> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        match self.rows.next() {
            Ok(Some(r)) => Some((self.f)(&r)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

// ---- statements and connections ---------------------------------------------------

enum StmtInner<'c> {
    Cached(rusqlite::CachedStatement<'c>),
    Plain(rusqlite::Statement<'c>),
}

/// A prepared statement.
pub struct Stmt<'c> {
    inner: StmtInner<'c>,
}

impl<'c> Stmt<'c> {
    fn st(&mut self) -> &mut rusqlite::Statement<'c> {
        match &mut self.inner {
            StmtInner::Cached(s) => s,
            StmtInner::Plain(s) => s,
        }
    }

    /// Runs the statement; the number of rows it changed.
    pub fn execute(&mut self, p: impl Params) -> Result<usize> {
        let st = self.st();
        bind(st, &p)?;
        Ok(st.raw_execute()?)
    }

    pub fn query(&mut self, p: impl Params) -> Result<Rows<'_>> {
        let st = self.st();
        bind(st, &p)?;
        Ok(Rows {
            rows: st.raw_query(),
        })
    }

    pub fn query_map<T, F: FnMut(&Row<'_>) -> Result<T>>(
        &mut self,
        p: impl Params,
        f: F,
    ) -> Result<MappedRows<'_, F>> {
        Ok(MappedRows {
            rows: self.query(p)?,
            f,
        })
    }

    /// The first row, mapped; [`Error::NoRows`] when there is none.
    pub fn query_row<T>(
        &mut self,
        p: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut rows = self.query(p)?;
        match rows.next()? {
            Some(r) => f(&r),
            None => Err(Error::NoRows),
        }
    }

    pub fn exists(&mut self, p: impl Params) -> Result<bool> {
        Ok(self.query(p)?.next()?.is_some())
    }
}

/// A connection to the central's store.
pub struct Connection {
    sqlite: rusqlite::Connection,
}

impl Connection {
    /// The SQLite file at `path`, created if missing.
    pub fn open_sqlite(path: &Path) -> Result<Connection> {
        let sqlite = rusqlite::Connection::open(path)?;
        sqlite.set_prepared_statement_cache_capacity(64);
        Ok(Connection { sqlite })
    }

    pub fn busy_timeout(&self, d: std::time::Duration) -> Result<()> {
        Ok(self.sqlite.busy_timeout(d)?)
    }

    pub fn pragma_update(&self, name: &str, value: impl ToSql) -> Result<()> {
        Ok(self.sqlite.pragma_update(None, name, value.to_param())?)
    }

    pub fn execute(&self, sql: &str, p: impl Params) -> Result<usize> {
        self.prepare(sql)?.execute(p)
    }

    /// Statements without parameters, separated by `;` (a schema migration).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        Ok(self.sqlite.execute_batch(sql)?)
    }

    pub fn query_row<T>(
        &self,
        sql: &str,
        p: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.prepare(sql)?.query_row(p, f)
    }

    pub fn prepare(&self, sql: &str) -> Result<Stmt<'_>> {
        Ok(Stmt {
            inner: StmtInner::Plain(self.sqlite.prepare(sql)?),
        })
    }

    /// A statement kept prepared on this connection for its next use.
    pub fn prepare_cached(&self, sql: &str) -> Result<Stmt<'_>> {
        Ok(Stmt {
            inner: StmtInner::Cached(self.sqlite.prepare_cached(sql)?),
        })
    }

    /// A write transaction holding the engine's write lock from its start
    /// (SQLite: `BEGIN IMMEDIATE`, waiting out the busy timeout), so it never
    /// fails to upgrade a read lock mid-way.
    pub fn write_transaction(&mut self) -> Result<Tx<'_>> {
        self.sqlite.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Tx {
            conn: self,
            done: false,
        })
    }

    /// A read transaction: every statement in it sees one snapshot.
    pub fn read_transaction(&self) -> Result<Tx<'_>> {
        self.sqlite.execute_batch("BEGIN DEFERRED")?;
        Ok(Tx {
            conn: self,
            done: false,
        })
    }
}

/// A transaction on a connection; rolled back if dropped uncommitted.
pub struct Tx<'c> {
    conn: &'c Connection,
    done: bool,
}

impl Tx<'_> {
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        Ok(self.conn.sqlite.execute_batch("COMMIT")?)
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            // A failed rollback leaves SQLite to roll back when the
            // connection closes; nothing of the transaction is kept either way.
            let _ = self.conn.sqlite.execute_batch("ROLLBACK");
        }
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let c = Connection::open_sqlite(Path::new(":memory:")).unwrap();
        c.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER, b BLOB)")
            .unwrap();
        c
    }

    #[test]
    fn values_go_in_and_come_out_as_they_were() {
        let c = conn();
        let n: Option<u32> = None;
        c.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3)",
            params!["a", 7u32, vec![1u8, 2]],
        )
        .unwrap();
        c.execute("INSERT INTO t VALUES (?1, ?2, NULL)", params!["b", n])
            .unwrap();
        let (k, v, b): (String, i64, Vec<u8>) = c
            .query_row("SELECT k, n, b FROM t WHERE k = ?1", ["a"], |r| {
                Ok((r.get(0)?, r.get(1usize)?, r.get(2usize)?))
            })
            .unwrap();
        assert_eq!((k.as_str(), v, b), ("a", 7, vec![1, 2]));
        let none: Option<i64> = c
            .query_row("SELECT n FROM t WHERE k = 'b'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(none, None);
        // A NULL read as a number is an error that names the column, never a 0.
        let e = c
            .query_row("SELECT n FROM t WHERE k = 'b'", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert!(
            e.to_string().contains("column 0") && e.to_string().contains("NULL"),
            "{e}"
        );
        assert!(c
            .query_row("SELECT n FROM t WHERE k = 'z'", [], |r| r.get::<_, i64>(0))
            .optional()
            .unwrap()
            .is_none());
        // Too few parameters is an error, not a NULL bound silently.
        assert!(c
            .execute("INSERT INTO t VALUES (?1, ?2, ?3)", ["c"])
            .is_err());
    }

    #[test]
    fn a_dropped_transaction_leaves_nothing() {
        let mut c = conn();
        {
            let tx = c.write_transaction().unwrap();
            tx.execute("INSERT INTO t (k) VALUES ('x')", []).unwrap();
        }
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        let tx = c.write_transaction().unwrap();
        tx.execute("INSERT INTO t (k) VALUES ('x')", []).unwrap();
        tx.commit().unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}
