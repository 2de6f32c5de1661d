//! What the pool, the writer and the statements share below them: SQLite's connection
//! settings, how sqlx errors are told apart, and the texts of multi-row statements (their
//! placeholders by [`Dialect`], kept in a [`SqlCache`]).

use std::fmt::Write as _;

use sqlx::{AnyConnection, Executor as _};

/// A unique constraint refused the statement (an idempotency key another transaction
/// inserted first).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// SQLite's durability and concurrency settings, on every connection.
pub(crate) async fn sqlite_pragmas(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute("PRAGMA journal_mode = WAL").await?;
    conn.execute("PRAGMA synchronous = FULL").await?;
    conn.execute("PRAGMA busy_timeout = 5000").await?;
    conn.execute("PRAGMA foreign_keys = ON").await?;
    Ok(())
}

/// `true` for errors that mean "the database is not reachable now": worth a 503 and a
/// retry, not a 500.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    )
}

/// The texts of one multi-row statement, by row count and [`Dialect`]: made once for each
/// power of two up to 512 and kept (formatting hundreds of placeholders per batch showed
/// in the profile); other counts are made each time.
#[derive(Debug)]
pub(crate) struct SqlCache([[std::sync::OnceLock<String>; 10]; 2]);

impl SqlCache {
    /// Empty, for a `static`.
    pub(crate) const fn new() -> Self {
        Self([const { [const { std::sync::OnceLock::new() }; 10] }; 2])
    }

    /// The text for `rows` rows in `dialect`, made by `make` the first time.
    pub(crate) fn get(
        &'static self,
        dialect: Dialect,
        rows: usize,
        make: impl FnOnce(Dialect, usize) -> String,
    ) -> std::borrow::Cow<'static, str> {
        match self.0[dialect as usize].get(rows.trailing_zeros() as usize) {
            Some(slot) if rows.is_power_of_two() => {
                slot.get_or_init(|| make(dialect, rows)).as_str().into()
            }
            _ => make(dialect, rows).into(),
        }
    }
}

/// How the generated statements are shaped for a connection's database: their chunks,
/// the width of their `IN` lists and how their parameters are marked. Decided once per
/// connection use ([`Dialect::of`]) instead of by each helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// Parameters `$1, $2, ...`; a statement of the exact size (each one is a network
    /// round trip).
    Postgres = 0,
    /// Parameters `?, ?, ...`, bound in order. SQLite also takes `$1`, but as a named
    /// parameter, and sqlx looks up each parameter's name as it binds it, a lookup SQLite
    /// does by scanning the statement's names from the first: for a batch's multi-row
    /// inserts, hundreds of parameters, about 3,900 instructions per POST
    /// (`benches/orders-instructions`). Sizes go in powers of two ([`pow2_chunks`]), where
    /// parsing a statement costs more than running another (it is in the process).
    Sqlite = 1,
}

impl Dialect {
    /// The dialect of `conn`'s database.
    pub(crate) fn of(conn: &AnyConnection) -> Self {
        if conn.backend_name() == "SQLite" {
            Self::Sqlite
        } else {
            Self::Postgres
        }
    }

    /// `n` rows in the chunks of one multi-row statement each: on SQLite power-of-two
    /// sizes, on PostgreSQL one chunk.
    pub(crate) fn chunks(self, n: usize) -> Vec<(usize, usize)> {
        match self {
            Self::Sqlite => pow2_chunks(n).collect(),
            Self::Postgres if n == 0 => Vec::new(),
            Self::Postgres => vec![(0, n)],
        }
    }

    /// How many places an `IN` list of `n` values gets: on SQLite the next power of two
    /// (the last value repeated), for the same reason as [`chunks`](Self::chunks).
    pub(crate) fn width(self, n: usize) -> usize {
        match self {
            Self::Sqlite => n.next_power_of_two(),
            Self::Postgres => n,
        }
    }
}

/// `n` rows as chunks of power-of-two sizes, largest first: `(start, len)`. A multi-row
/// statement's text depends on its row count; with these sizes a connection sees at most
/// ten texts per statement, which its prepared-statement cache keeps, instead of one per
/// batch size, which would push each other out and be parsed again and again.
pub(crate) fn pow2_chunks(n: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut at = 0;
    (0..usize::BITS).rev().filter_map(move |bit| {
        let len = 1usize << bit;
        (n & len != 0).then(|| {
            let chunk = (at, len);
            at += len;
            chunk
        })
    })
}

/// `n` placeholders, the first the statement's parameter `from`: `$from, $from+1, ...`
/// or `?, ?, ...`.
pub(crate) fn list(dialect: Dialect, from: usize, n: usize) -> String {
    let mut s = String::with_capacity(n * 5);
    for i in from..from + n {
        if i > from {
            s.push_str(", ");
        }
        match dialect {
            Dialect::Postgres => {
                let _ = write!(s, "${i}");
            }
            Dialect::Sqlite => s.push('?'),
        }
    }
    s
}

/// `($1, ..., $w), ($w+1, ...), ...` (or `(?, ...), ...`): `rows` rows of `width`
/// placeholders.
pub(crate) fn placeholders(dialect: Dialect, rows: usize, width: usize) -> String {
    rows_from(dialect, 1, rows, width)
}

/// [`placeholders`] whose first parameter is `from`: for a statement with more than one
/// list of rows.
pub(crate) fn rows_from(dialect: Dialect, from: usize, rows: usize, width: usize) -> String {
    let mut s = String::with_capacity(rows * width * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        s.push_str(&list(dialect, from + r * width, width));
        s.push(')');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_rows_of_columns() {
        assert_eq!(list(Dialect::Postgres, 3, 2), "$3, $4");
        assert_eq!(
            placeholders(Dialect::Postgres, 2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(placeholders(Dialect::Postgres, 1, 1), "($1)");
        assert_eq!(rows_from(Dialect::Postgres, 7, 2, 2), "($7, $8), ($9, $10)");
        assert_eq!(list(Dialect::Sqlite, 3, 2), "?, ?");
        assert_eq!(placeholders(Dialect::Sqlite, 2, 2), "(?, ?), (?, ?)");
        assert_eq!(
            pow2_chunks(13).collect::<Vec<_>>(),
            [(0, 8), (8, 4), (12, 1)]
        );
        assert_eq!(pow2_chunks(0).count(), 0);
        assert_eq!(pow2_chunks(512).collect::<Vec<_>>(), [(0, 512)]);
    }
}
