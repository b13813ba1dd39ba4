//! The central's store boundary: one connection type for every statement the
//! central runs, so the same central code runs on an SQLite file (the embedded
//! default: `demo`, tests, pilots) or on PostgreSQL for deployments that
//! outgrow one file (`--db postgres://…`, issue 31).
//!
//! The calls mirror rusqlite's (`execute`, `query_row`, `prepare_cached`,
//! `query_map`, `optional`): the central was written against them and keeps
//! reading the same way. What must hold on both engines, and so is all this
//! module lets through:
//! - parameters are numbered (`?1`, `?2`…; `$1`… on PostgreSQL, rewritten
//!   here) and are integers, reals, text, bytes or NULL ([`Param`]); a boolean
//!   is an integer 0/1, as SQLite stores it; PostgreSQL gets each in the type
//!   the statement's parameter has;
//! - a column is read as one of those and converted on read ([`FromSql`]);
//! - writes are serialised as SQLite serialises them: a write transaction takes
//!   the write lock at its start (SQLite `BEGIN IMMEDIATE`; PostgreSQL a
//!   transaction-scoped advisory lock), and so does a single write statement
//!   outside one. Change-log and queue ids are therefore committed in the order
//!   they are given, so a reader's cursor never passes an id still uncommitted;
//! - a read transaction sees one snapshot (PostgreSQL `REPEATABLE READ`,
//!   read-only: a write in it is an error, not a write outside the lock);
//! - a query's rows are read while the statement runs on SQLite, and fetched
//!   whole on PostgreSQL (statements run inside the loop over them): queries
//!   the central runs are bounded by `LIMIT` or by the set they name.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Which engine a connection talks to; the few statements whose text differs
/// between the two ask it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The store's errors: what the engine said, or a value of the wrong kind.
#[derive(Debug)]
pub enum Error {
    Sqlite(rusqlite::Error),
    Postgres(postgres::Error),
    /// PostgreSQL could not prepare a statement of the central's: the
    /// statement's start is kept for the engineer (no parameter is).
    Prepare(postgres::Error, String),
    /// A query that must return a row returned none.
    NoRows,
    /// A column held a value the caller cannot take (a NULL for a number, text
    /// for an integer), or a parameter its statement cannot take.
    Conversion(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sqlite(e) => e.fmt(f),
            Error::Postgres(e) => PgMessage(e).fmt(f),
            Error::Prepare(e, sql) => {
                write!(f, "{} in statement `{sql}`", PgMessage(e))
            }
            Error::NoRows => f.write_str("query returned no rows"),
            Error::Conversion(m) => f.write_str(m),
        }
    }
}

/// PostgreSQL's message with the server's detail when it gave one.
struct PgMessage<'a>(&'a postgres::Error);

impl fmt::Display for PgMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_db_error() {
            Some(d) => match d.detail() {
                Some(detail) => write!(f, "PostgreSQL: {} ({detail})", d.message()),
                None => write!(f, "PostgreSQL: {}", d.message()),
            },
            None => {
                write!(f, "PostgreSQL: {}", self.0)?;
                match std::error::Error::source(self.0) {
                    Some(why) => write!(f, ": {why}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Sqlite(e) => Some(e),
            Error::Postgres(e) | Error::Prepare(e, _) => Some(e),
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

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        Error::Postgres(e)
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

/// A parameter for PostgreSQL, encoded as the type the server gave the
/// statement's parameter: `?1` compared with a BIGINT column is an INT8, in a
/// text context it is TEXT. A value that does not fit (text for a number) is
/// an error naming both, never a silent cast.
#[derive(Debug)]
struct PgParam<'a>(Param<'a>);

impl postgres::types::ToSql for PgParam<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use postgres::types::Type;
        let text_like = matches!(
            *ty,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
        );
        match self.0 {
            Param::Null => Ok(postgres::types::IsNull::Yes),
            Param::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                Type::FLOAT8 => (i as f64).to_sql(ty, out),
                Type::FLOAT4 => (i as f32).to_sql(ty, out),
                _ if text_like => i.to_string().as_str().to_sql(ty, out),
                _ => Err(format!("an integer for a parameter of type {ty}").into()),
            },
            Param::Real(r) => match *ty {
                Type::FLOAT8 => r.to_sql(ty, out),
                Type::FLOAT4 => (r as f32).to_sql(ty, out),
                _ if text_like => r.to_string().as_str().to_sql(ty, out),
                _ => Err(format!("a real for a parameter of type {ty}").into()),
            },
            Param::Text(s) if text_like => s.to_sql(ty, out),
            Param::Text(s) if *ty == Type::JSON || *ty == Type::JSONB => {
                // JSON's binary form is its text; JSONB's leads with version 1.
                if *ty == Type::JSONB {
                    out.extend_from_slice(&[1]);
                }
                out.extend_from_slice(s.as_bytes());
                Ok(postgres::types::IsNull::No)
            }
            Param::Text(_) => Err(format!("text for a parameter of type {ty}").into()),
            Param::Bytes(b) if *ty == Type::BYTEA => b.to_sql(ty, out),
            Param::Bytes(_) => Err(format!("bytes for a parameter of type {ty}").into()),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// A statement's parameters: `[]`, `[a]`, `[a, b]` of one type, or
/// [`params!`] for mixed types.
pub trait Params {
    fn list(&self) -> Vec<Param<'_>>;
}

// Arrays of one to sixteen values of one type; `[]` alone is the empty list
// (one impl for length 0, so the literal needs no annotation).
macro_rules! array_params {
    ($($n:literal)*) => {$(
        impl<T: ToSql> Params for [T; $n] {
            fn list(&self) -> Vec<Param<'_>> {
                self.iter().map(ToSql::to_param).collect()
            }
        }
    )*};
}
array_params!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
impl Params for [&dyn ToSql; 0] {
    fn list(&self) -> Vec<Param<'_>> {
        Vec::new()
    }
}
impl Params for &[&dyn ToSql] {
    fn list(&self) -> Vec<Param<'_>> {
        self.iter().map(|p| p.to_param()).collect()
    }
}
impl Params for () {
    fn list(&self) -> Vec<Param<'_>> {
        Vec::new()
    }
}

/// Mixed-type parameters, as rusqlite's `params!`.
#[macro_export]
macro_rules! central_params {
    () => { &[] as &[&dyn $crate::central::db::ToSql] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::central::db::ToSql),+] as &[&dyn $crate::central::db::ToSql] };
}
pub use crate::central_params as params;

fn bind(stmt: &mut rusqlite::Statement<'_>, p: &dyn Params) -> Result<()> {
    let list = p.list();
    if list.len() != stmt.parameter_count() {
        return Err(Error::Sqlite(rusqlite::Error::InvalidParameterCount(
            list.len(),
            stmt.parameter_count(),
        )));
    }
    for (i, v) in list.into_iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, v)?;
    }
    Ok(())
}

/// `?N` (and a bare `?`) to PostgreSQL's `$N`, outside quoted text and names.
fn pg_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quote: Option<char> = None;
    let mut next = 1;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (Some(_), c) => out.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (None, '?') => {
                out.push('$');
                if chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                    while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                        out.push(d);
                        chars.next();
                    }
                } else {
                    out.push_str(&next.to_string());
                    next += 1;
                }
            }
            (None, c) => out.push(c),
        }
    }
    out
}

// ---- columns ----------------------------------------------------------------------

/// A column's value as every engine gives it.
#[derive(Debug, Clone, Copy)]
pub enum Val<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a [u8]),
    Bytes(&'a [u8]),
}

impl Val<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Val::Null => "NULL",
            Val::Int(_) => "an integer",
            Val::Real(_) => "a real",
            Val::Text(_) => "text",
            Val::Bytes(_) => "bytes",
        }
    }

    fn wrong<T>(&self, want: &str) -> Result<T> {
        Err(Error::Conversion(format!(
            "a column holds {} where {want} was expected",
            self.kind()
        )))
    }
}

impl<'a> From<rusqlite::types::ValueRef<'a>> for Val<'a> {
    fn from(v: rusqlite::types::ValueRef<'a>) -> Self {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => Val::Null,
            ValueRef::Integer(i) => Val::Int(i),
            ValueRef::Real(r) => Val::Real(r),
            ValueRef::Text(t) => Val::Text(t),
            ValueRef::Blob(b) => Val::Bytes(b),
        }
    }
}

/// Column `i` of a PostgreSQL row as a [`Val`]. Booleans become 0/1 as in
/// SQLite; NUMERIC (what `sum` of BIGINTs gives) must be cast in the statement.
fn pg_val(row: &postgres::Row, i: usize) -> Result<Val<'_>> {
    use postgres::types::Type;
    let ty = row
        .columns()
        .get(i)
        .ok_or_else(|| Error::Conversion(format!("no column {i}")))?
        .type_()
        .clone();
    let v = match ty {
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)?
            .map(|b| Val::Int(b as i64)),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)?
            .map(|n| Val::Int(n.into())),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)?
            .map(|n| Val::Int(n.into())),
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Val::Int),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)?
            .map(|r| Val::Real(r.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(Val::Real),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => row
            .try_get::<_, Option<&str>>(i)?
            .map(|s| Val::Text(s.as_bytes())),
        Type::BYTEA => row.try_get::<_, Option<&[u8]>>(i)?.map(Val::Bytes),
        ty => {
            return Err(Error::Conversion(format!(
                "column {i} is of type {ty}; the statement must cast it to BIGINT or TEXT"
            )))
        }
    };
    Ok(v.unwrap_or(Val::Null))
}

/// A value a column can be read as.
pub trait FromSql: Sized {
    fn from_val(v: Val<'_>) -> Result<Self>;
}

macro_rules! int_from_sql {
    ($($t:ty),*) => {$(
        impl FromSql for $t {
            fn from_val(v: Val<'_>) -> Result<Self> {
                let i = match v {
                    Val::Int(i) => i,
                    // A JSON field read with json_extract is text on
                    // PostgreSQL where SQLite gives its number: decimal digits
                    // are taken as the number they spell.
                    Val::Text(t) => match std::str::from_utf8(t).ok().and_then(|t| t.parse::<i64>().ok()) {
                        Some(i) => i,
                        None => return v.wrong("an integer"),
                    },
                    v => return v.wrong("an integer"),
                };
                <$t>::try_from(i).map_err(|_| {
                    Error::Conversion(format!("{i} is out of range for {}", stringify!($t)))
                })
            }
        }
    )*};
}
int_from_sql!(i64, i32, u32, u64, usize);

impl FromSql for bool {
    fn from_val(v: Val<'_>) -> Result<Self> {
        match v {
            Val::Int(i) => Ok(i != 0),
            v => v.wrong("a boolean"),
        }
    }
}
impl FromSql for f64 {
    fn from_val(v: Val<'_>) -> Result<Self> {
        match v {
            Val::Int(i) => Ok(i as f64),
            Val::Real(r) => Ok(r),
            v => v.wrong("a number"),
        }
    }
}
impl FromSql for String {
    fn from_val(v: Val<'_>) -> Result<Self> {
        match v {
            Val::Text(t) => std::str::from_utf8(t)
                .map(str::to_owned)
                .map_err(|e| Error::Conversion(format!("text that is not UTF-8: {e}"))),
            v => v.wrong("text"),
        }
    }
}
impl FromSql for Vec<u8> {
    fn from_val(v: Val<'_>) -> Result<Self> {
        match v {
            Val::Bytes(b) | Val::Text(b) => Ok(b.to_vec()),
            v => v.wrong("bytes"),
        }
    }
}
impl<T: FromSql> FromSql for Option<T> {
    fn from_val(v: Val<'_>) -> Result<Self> {
        match v {
            Val::Null => Ok(None),
            v => T::from_val(v).map(Some),
        }
    }
}

/// Any column's value, owned: what a whole-store copy carries from one
/// engine to the other.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl FromSql for Value {
    fn from_val(v: Val<'_>) -> Result<Self> {
        Ok(match v {
            Val::Null => Value::Null,
            Val::Int(i) => Value::Int(i),
            Val::Real(r) => Value::Real(r),
            Val::Text(_) => Value::Text(String::from_val(v)?),
            Val::Bytes(b) => Value::Bytes(b.to_vec()),
        })
    }
}

impl ToSql for Value {
    fn to_param(&self) -> Param<'_> {
        match self {
            Value::Null => Param::Null,
            Value::Int(i) => Param::Int(*i),
            Value::Real(r) => Param::Real(*r),
            Value::Text(s) => Param::Text(s),
            Value::Bytes(b) => Param::Bytes(b),
        }
    }
}

impl Params for &[Value] {
    fn list(&self) -> Vec<Param<'_>> {
        self.iter().map(ToSql::to_param).collect()
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
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a postgres::Row),
}

impl Row<'_> {
    /// Column `i` (from 0) as a `T`.
    pub fn get<I: ColumnIndex, T: FromSql>(&self, i: I) -> Result<T> {
        let i = i.index();
        let v = match self {
            Row::Sqlite(r) => Val::from(r.get_ref(i)?),
            Row::Postgres(r) => pg_val(r, i)?,
        };
        T::from_val(v).map_err(|e| match e {
            Error::Conversion(m) => Error::Conversion(format!("column {i}: {m}")),
            e => e,
        })
    }
}

/// The rows of a query, one at a time.
pub struct Rows<'s> {
    inner: RowsInner<'s>,
}

enum RowsInner<'s> {
    Sqlite(rusqlite::Rows<'s>),
    Postgres(std::vec::IntoIter<postgres::Row>, Option<postgres::Row>),
}

impl Rows<'_> {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Row<'_>>> {
        match &mut self.inner {
            RowsInner::Sqlite(rows) => Ok(rows.next()?.map(Row::Sqlite)),
            RowsInner::Postgres(rest, current) => {
                *current = rest.next();
                Ok(current.as_ref().map(Row::Postgres))
            }
        }
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

// ---- statements -------------------------------------------------------------------

enum StmtInner<'c> {
    Cached(rusqlite::CachedStatement<'c>),
    Plain(rusqlite::Statement<'c>),
    Postgres(&'c Pg, postgres::Statement, bool),
}

/// A prepared statement.
pub struct Stmt<'c> {
    inner: StmtInner<'c>,
}

impl<'c> Stmt<'c> {
    fn sqlite(&mut self) -> Option<&mut rusqlite::Statement<'c>> {
        match &mut self.inner {
            StmtInner::Cached(s) => Some(s),
            StmtInner::Plain(s) => Some(s),
            StmtInner::Postgres(..) => None,
        }
    }

    /// Runs the statement; the number of rows it changed.
    pub fn execute(&mut self, p: impl Params) -> Result<usize> {
        if let StmtInner::Postgres(pg, st, _) = &self.inner {
            return pg.execute(st, &p.list());
        }
        let st = self.sqlite().expect("an SQLite statement");
        bind(st, &p)?;
        Ok(st.raw_execute()?)
    }

    pub fn query(&mut self, p: impl Params) -> Result<Rows<'_>> {
        if let StmtInner::Postgres(pg, st, writes) = &self.inner {
            let rows = pg.query(st, &p.list(), *writes)?;
            return Ok(Rows {
                inner: RowsInner::Postgres(rows.into_iter(), None),
            });
        }
        let st = self.sqlite().expect("an SQLite statement");
        bind(st, &p)?;
        Ok(Rows {
            inner: RowsInner::Sqlite(st.raw_query()),
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
}

// ---- PostgreSQL -------------------------------------------------------------------

/// The key of the advisory lock every PostgreSQL write takes ("fsyn"): the
/// central's writes are serialised there as SQLite serialises them.
const WRITE_LOCK: i64 = 0x6673_796e;
/// PostgreSQL connections open at most (PostgreSQL's default limit is 100
/// for the whole server): the request workers (16) and the integrations beside
/// them; a connection over this waits for one to come back, as a write waits
/// for the lock.
const MAX_CONNECTIONS: usize = 32;
/// Prepared statements kept per PostgreSQL connection.
const CACHED_STATEMENTS: usize = 256;

/// Where a PostgreSQL central's connections come from, and where they go back.
pub struct PgPool {
    config: postgres::Config,
    /// Idle connections, and how many are open (idle or in use).
    idle: Mutex<(Vec<PgClient>, usize)>,
    returned: std::sync::Condvar,
    busy_timeout: Mutex<std::time::Duration>,
}

struct PgClient {
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
}

impl PgPool {
    /// A pool for `url` (`postgres://user:password@host:port/database`, or
    /// key=value form); connects once now, so a wrong URL is found at start.
    pub fn new(url: &str) -> Result<Arc<PgPool>> {
        let config: postgres::Config = url.parse()?;
        let pool = Arc::new(PgPool {
            config,
            idle: Mutex::new((Vec::new(), 0)),
            returned: std::sync::Condvar::new(),
            busy_timeout: Mutex::new(std::time::Duration::from_secs(60)),
        });
        drop(pool.connect()?);
        Ok(pool)
    }

    /// The database's name, for messages and the restore note's file name.
    pub fn database(&self) -> &str {
        self.config.get_dbname().unwrap_or("postgres")
    }

    pub fn connect(self: &Arc<PgPool>) -> Result<Connection> {
        let timeout = *self.busy_timeout.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = std::time::Instant::now() + timeout;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let reused = loop {
            if let Some(c) = idle.0.pop() {
                if c.client.is_closed() {
                    idle.1 -= 1;
                    continue;
                }
                break Some(c);
            }
            if idle.1 < MAX_CONNECTIONS {
                idle.1 += 1;
                break None;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Error::Conversion(format!(
                    "all {MAX_CONNECTIONS} PostgreSQL connections stayed in use for {timeout:?}"
                )));
            }
            idle = self
                .returned
                .wait_timeout(idle, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        drop(idle);
        let client = match reused {
            Some(c) => c,
            None => self.open(timeout).inspect_err(|_| self.closed())?,
        };
        Ok(Connection {
            backend: Backend::Postgres(Box::new(Pg {
                client: RefCell::new(Some(client)),
                pool: self.clone(),
                in_tx: Cell::new(false),
                failed: Cell::new(false),
            })),
        })
    }
}

impl PgPool {
    fn open(&self, timeout: std::time::Duration) -> Result<PgClient> {
        let mut client = self.config.connect(postgres::NoTls)?;
        // A write waits this long for the write lock, as SQLite's busy timeout.
        client.batch_execute(&format!("SET lock_timeout = '{}ms'", timeout.as_millis()))?;
        Ok(PgClient {
            client,
            statements: HashMap::new(),
        })
    }

    /// A connection closed for good: another may open.
    fn closed(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).1 -= 1;
        self.returned.notify_one();
    }
}

struct Pg {
    client: RefCell<Option<PgClient>>,
    pool: Arc<PgPool>,
    /// A transaction was begun on this connection (set before its BEGIN is
    /// sent) and not yet ended.
    in_tx: Cell<bool>,
    /// A statement failed: the connection is rolled back before it is reused,
    /// so no failed transaction can reach the next user.
    failed: Cell<bool>,
}

impl Pg {
    fn with<T>(&self, f: impl FnOnce(&mut PgClient) -> Result<T>) -> Result<T> {
        let mut c = self.client.borrow_mut();
        let r = f(c.as_mut().expect("an open PostgreSQL connection"));
        if r.is_err() {
            self.failed.set(true);
        }
        r
    }

    fn prepare(&self, sql: &str) -> Result<(postgres::Statement, bool)> {
        let writes = writes(sql);
        self.with(|c| {
            if let Some(s) = c.statements.get(sql) {
                return Ok((s.clone(), writes));
            }
            let st = c.client.prepare(&pg_placeholders(sql)).map_err(|e| {
                let start: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
                let start: String = start.chars().take(160).collect();
                Error::Prepare(e, start)
            })?;
            if c.statements.len() >= CACHED_STATEMENTS {
                c.statements.clear();
            }
            c.statements.insert(sql.to_string(), st.clone());
            Ok((st, writes))
        })
    }

    /// Runs `f` in a transaction holding the write lock unless one is open:
    /// a single write statement is serialised as in SQLite.
    fn locked<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        self.with(|c| {
            if self.in_tx.get() {
                return Ok(f(&mut c.client)?);
            }
            if let Err(e) = c.client.batch_execute(&begin_write()) {
                // The BEGIN may have opened a transaction the lock's wait then failed.
                let _ = c.client.batch_execute("ROLLBACK");
                return Err(e.into());
            }
            match f(&mut c.client) {
                Ok(v) => {
                    c.client.batch_execute("COMMIT")?;
                    Ok(v)
                }
                Err(e) => {
                    let _ = c.client.batch_execute("ROLLBACK");
                    Err(e.into())
                }
            }
        })
    }

    fn execute(&self, st: &postgres::Statement, list: &[Param<'_>]) -> Result<usize> {
        let params: Vec<PgParam<'_>> = list.iter().map(|p| PgParam(*p)).collect();
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p as _).collect();
        Ok(self.locked(|c| c.execute(st, &refs))? as usize)
    }

    fn query(
        &self,
        st: &postgres::Statement,
        list: &[Param<'_>],
        writes: bool,
    ) -> Result<Vec<postgres::Row>> {
        let params: Vec<PgParam<'_>> = list.iter().map(|p| PgParam(*p)).collect();
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p as _).collect();
        if writes {
            self.locked(|c| c.query(st, &refs))
        } else {
            self.with(|c| Ok(c.client.query(st, &refs)?))
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(mut c) = self.client.get_mut().take() {
            // A connection that saw a failure is reused only once rolled back;
            // one left inside a transaction is not reused.
            let reset = || {
                let t = *self
                    .pool
                    .busy_timeout
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                format!("ROLLBACK; SET lock_timeout = '{}ms'", t.as_millis())
            };
            let clean = !self.failed.get() || c.client.batch_execute(&reset()).is_ok();
            if clean && !self.in_tx.get() && !c.client.is_closed() {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .0
                    .push(c);
                self.pool.returned.notify_one();
            } else {
                drop(c);
                self.pool.closed();
            }
        }
    }
}

fn begin_write() -> String {
    format!("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITE_LOCK})")
}

/// Whether a statement writes (and so must hold the write lock when it runs
/// outside a transaction): by its first word.
fn writes(sql: &str) -> bool {
    let word: String = sql
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    matches!(
        word.as_str(),
        "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "WITH"
    )
}

// ---- connections ------------------------------------------------------------------

enum Backend {
    Sqlite(rusqlite::Connection),
    Postgres(Box<Pg>),
}

/// A connection to the central's store.
pub struct Connection {
    backend: Backend,
}

impl Connection {
    /// The SQLite file at `path`, created if missing.
    pub fn open_sqlite(path: &Path) -> Result<Connection> {
        let sqlite = rusqlite::Connection::open(path)?;
        sqlite.set_prepared_statement_cache_capacity(64);
        Ok(Connection {
            backend: Backend::Sqlite(sqlite),
        })
    }

    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// How long a write waits for another's write lock.
    pub fn busy_timeout(&self, d: std::time::Duration) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(c) => Ok(c.busy_timeout(d)?),
            // This connection's only: the pool's others keep the central's.
            Backend::Postgres(pg) => pg.with(|c| {
                Ok(c.client
                    .batch_execute(&format!("SET lock_timeout = '{}ms'", d.as_millis()))?)
            }),
        }
    }

    /// An SQLite setting (journal mode, synchronous); PostgreSQL has its own
    /// in its server's configuration, so none applies there.
    pub fn pragma_update(&self, name: &str, value: impl ToSql) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(c) => Ok(c.pragma_update(None, name, value.to_param())?),
            Backend::Postgres(_) => Ok(()),
        }
    }

    pub fn execute(&self, sql: &str, p: impl Params) -> Result<usize> {
        self.prepare_cached(sql)?.execute(p)
    }

    /// Statements without parameters, separated by `;` (a schema migration).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Backend::Postgres(pg) => pg.with(|c| Ok(c.client.batch_execute(sql)?)),
        }
    }

    pub fn query_row<T>(
        &self,
        sql: &str,
        p: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.prepare_cached(sql)?.query_row(p, f)
    }

    pub fn prepare(&self, sql: &str) -> Result<Stmt<'_>> {
        match &self.backend {
            Backend::Sqlite(c) => Ok(Stmt {
                inner: StmtInner::Plain(c.prepare(sql)?),
            }),
            Backend::Postgres(_) => self.prepare_cached(sql),
        }
    }

    /// A statement kept prepared on this connection for its next use.
    pub fn prepare_cached(&self, sql: &str) -> Result<Stmt<'_>> {
        match &self.backend {
            Backend::Sqlite(c) => Ok(Stmt {
                inner: StmtInner::Cached(c.prepare_cached(sql)?),
            }),
            Backend::Postgres(pg) => {
                let (st, writes) = pg.prepare(sql)?;
                Ok(Stmt {
                    inner: StmtInner::Postgres(pg, st, writes),
                })
            }
        }
    }

    /// A write transaction holding the write lock from its start (SQLite:
    /// `BEGIN IMMEDIATE`, waiting out the busy timeout; PostgreSQL: the
    /// advisory lock every write takes), so it never fails to upgrade a read
    /// lock mid-way and never interleaves with another write.
    pub fn write_transaction(&mut self) -> Result<Tx<'_>> {
        match &self.backend {
            Backend::Sqlite(c) => c.execute_batch("BEGIN IMMEDIATE")?,
            Backend::Postgres(pg) => pg.with(|c| {
                // A lock wait that timed out leaves the BEGIN's transaction
                // open and failed: ended here, the connection stays usable.
                c.client.batch_execute(&begin_write()).map_err(|e| {
                    let _ = c.client.batch_execute("ROLLBACK");
                    Error::from(e)
                })
            })?,
        }
        self.began();
        Ok(Tx {
            conn: self,
            done: false,
        })
    }

    /// A read transaction: every statement in it sees one snapshot.
    pub fn read_transaction(&self) -> Result<Tx<'_>> {
        match &self.backend {
            Backend::Sqlite(c) => c.execute_batch("BEGIN DEFERRED")?,
            Backend::Postgres(pg) => pg.with(|c| {
                Ok(c.client
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")?)
            })?,
        }
        self.began();
        Ok(Tx {
            conn: self,
            done: false,
        })
    }

    fn began(&self) {
        if let Backend::Postgres(pg) = &self.backend {
            pg.in_tx.set(true);
        }
    }

    fn end(&self, sql: &str) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Backend::Postgres(pg) => {
                let r = pg.with(|c| Ok(c.client.batch_execute(sql)?));
                if r.is_ok() {
                    pg.in_tx.set(false);
                }
                r
            }
        }
    }
}

/// A new, empty database on the PostgreSQL server at `base` (a URL whose
/// user may create databases), named after the test directory `dir`; its URL.
#[cfg(any(test, feature = "testkit"))]
pub fn create_test_database(base: &str, dir: &Path) -> Result<String> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let tail: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = format!("fs_{}_{n}_{tail}", std::process::id());
    name.truncate(63);
    let mut client = base.parse::<postgres::Config>()?.connect(postgres::NoTls)?;
    client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))?;
    client.batch_execute(&format!("CREATE DATABASE \"{name}\""))?;
    let (head, _) = base
        .rsplit_once('/')
        .ok_or_else(|| Error::Conversion(format!("{base} is not a postgres://…/database URL")))?;
    Ok(format!("{head}/{name}"))
}

/// A transaction on a connection; rolled back if dropped uncommitted.
pub struct Tx<'c> {
    conn: &'c Connection,
    done: bool,
}

impl Tx<'_> {
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        self.conn.end("COMMIT")
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            // A failed rollback leaves the engine to roll back when the
            // connection closes (PostgreSQL's is then not reused): nothing of
            // the transaction is kept either way.
            let _ = self.conn.end("ROLLBACK");
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

    /// The stores the tests run on: SQLite always, PostgreSQL when
    /// `FIELDSYNC_TEST_POSTGRES` names a server (CI starts one).
    fn stores() -> Vec<Connection> {
        let mut out = vec![Connection::open_sqlite(Path::new(":memory:")).unwrap()];
        if let Ok(base) = std::env::var("FIELDSYNC_TEST_POSTGRES") {
            if !base.is_empty() {
                let url = create_test_database(&base, Path::new("db-unit")).unwrap();
                out.push(PgPool::new(&url).unwrap().connect().unwrap());
            }
        }
        for c in &out {
            c.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, n BIGINT, b BYTEA)")
                .or_else(|_| {
                    c.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, n BIGINT, b BLOB)")
                })
                .unwrap();
        }
        out
    }

    #[test]
    fn values_go_in_and_come_out_as_they_were() {
        for c in stores() {
            let d = c.dialect();
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
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            assert_eq!((k.as_str(), v, b), ("a", 7, vec![1, 2]), "{d:?}");
            let none: Option<i64> = c
                .query_row("SELECT n FROM t WHERE k = 'b'", [], |r| r.get(0))
                .unwrap();
            assert_eq!(none, None, "{d:?}");
            // A NULL read as a number is an error that names the column, never a 0.
            let e = c
                .query_row("SELECT n FROM t WHERE k = 'b'", [], |r| r.get::<_, i64>(0))
                .unwrap_err();
            assert!(
                e.to_string().contains("column 0") && e.to_string().contains("NULL"),
                "{d:?}: {e}"
            );
            assert!(c
                .query_row("SELECT n FROM t WHERE k = 'z'", [], |r| r.get::<_, i64>(0))
                .optional()
                .unwrap()
                .is_none());
            // A comparison is an integer 0/1 on both engines.
            let yes: bool = c
                .query_row("SELECT EXISTS (SELECT 1 FROM t WHERE n = ?1)", [7], |r| {
                    r.get(0)
                })
                .unwrap();
            assert!(yes, "{d:?}");
            // Too few parameters is an error, not a NULL bound silently.
            assert!(
                c.execute("INSERT INTO t VALUES (?1, ?2, ?3)", ["c"])
                    .is_err(),
                "{d:?}"
            );
            // Text where a number must go is an error on PostgreSQL, never a cast
            // (SQLite stores what it is given).
            if d == Dialect::Postgres {
                let e = c
                    .execute("UPDATE t SET n = ?1 WHERE k = 'a'", ["seven"])
                    .unwrap_err();
                assert!(
                    e.to_string().contains("text for a parameter of type int8"),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn a_dropped_transaction_leaves_nothing() {
        for mut c in stores() {
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

    #[test]
    fn a_read_transaction_cannot_write_on_postgres() {
        for c in stores() {
            if c.dialect() == Dialect::Postgres {
                let tx = c.read_transaction().unwrap();
                let e = tx
                    .execute("INSERT INTO t (k) VALUES ('r')", [])
                    .unwrap_err();
                assert!(e.to_string().contains("read-only"), "{e}");
            }
        }
    }

    /// Found by the fleet bench: a write whose wait for the lock timed out
    /// left its BEGIN's transaction open and failed, and the pool handed the
    /// connection on; every statement of its next users failed.
    #[test]
    fn a_write_that_waited_too_long_leaves_its_connection_usable() {
        let Ok(base) = std::env::var("FIELDSYNC_TEST_POSTGRES") else {
            return;
        };
        let url = create_test_database(&base, Path::new("db-lock")).unwrap();
        let pool = PgPool::new(&url).unwrap();
        let mut holder = pool.connect().unwrap();
        holder
            .execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY)")
            .unwrap();
        let held = holder.write_transaction().unwrap();
        let mut waiter = pool.connect().unwrap();
        waiter
            .busy_timeout(std::time::Duration::from_millis(50))
            .unwrap();
        let e = waiter.write_transaction().map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("lock timeout"), "{e}");
        // The same connection goes on, and so does the next user of it.
        assert!(waiter
            .execute("INSERT INTO t (k) VALUES ('w')", [])
            .is_err());
        drop(held);
        waiter
            .execute("INSERT INTO t (k) VALUES ('w')", [])
            .unwrap();
        drop(waiter);
        drop(holder);
        for _ in 0..3 {
            let c = pool.connect().unwrap();
            let n: i64 = c
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 1);
            let mut c = c;
            // The short wait went with its connection's failure.
            let tx = c.write_transaction().unwrap();
            tx.commit().unwrap();
        }
    }

    #[test]
    fn placeholders_are_numbered_for_postgres_outside_quotes() {
        assert_eq!(
            pg_placeholders("SELECT ?1, '?2', \"a?\" FROM t WHERE x = ?12 AND y = ?"),
            "SELECT $1, '?2', \"a?\" FROM t WHERE x = $12 AND y = $1"
        );
        assert!(writes("  insert INTO t VALUES (1)"));
        assert!(writes("WITH x AS (SELECT 1) DELETE FROM t"));
        assert!(!writes("SELECT 1"));
    }
}
