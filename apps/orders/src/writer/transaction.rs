//! The statements of one batch: the creates together where they can be, every other write
//! under a savepoint of its own, a batch of one as it would run alone.

use sqlx::{AnyConnection, Executor as _};

use super::{Target, Work, WriteError};
use crate::model::NewOrder;
use crate::ops::{
    apply, create_many, insert_new, insert_new_alone, is_constraint_violation, Created, Done, Op,
};

/// `jobs` in one transaction on `conn`: the creates together ([`creates`]), every other
/// write (and every create, when they failed together) under a savepoint of its own; then
/// the commit. `Err` when the transaction itself failed (begin, a savepoint, the commit).
pub(super) async fn transaction(
    conn: &mut AnyConnection,
    target: &Target,
    jobs: &[Work],
    events: bool,
) -> Result<Vec<Result<Done, WriteError>>, sqlx::Error> {
    if let [job] = jobs {
        return single(conn, target, &job.op, events).await.map(|r| vec![r]);
    }
    // Found once, for both ways of writing them together.
    let (at, found) = creates_of(jobs);
    if !target.sqlite && !events && found.len() == jobs.len() {
        if let Some(done) = creates_at_once(conn, &found).await {
            return Ok(done);
        }
    }
    conn.execute(target.begin()).await?;
    let mut done = creates(conn, target, jobs.len(), &at, &found, events).await?;
    for (job, slot) in jobs.iter().zip(done.iter_mut()) {
        if slot.is_none() {
            *slot = Some(one(conn, &job.op, events).await?);
        }
    }
    conn.execute("COMMIT").await?;
    Ok(done.into_iter().flatten().collect())
}

/// On PostgreSQL, a batch of creates alone and without outbox events needs no transaction
/// around it: the read of the stored keys, then one statement for every new order and key
/// ([`create_many`]), which commits as it ends and is atomic by itself. Two round trips
/// where `BEGIN`, the read, the inserts and `COMMIT` took four or more. Reading outside
/// the insert's transaction is no weaker than inside it: under `READ COMMITTED` a key
/// another process commits in between is not seen either way, and the insert's unique
/// violation catches it. `creates` is the whole batch. `None` when a statement failed
/// (nothing of the batch is then written: the read writes nothing, the insert rolls back
/// whole), and the batch runs in a transaction as usual.
async fn creates_at_once(
    conn: &mut AnyConnection,
    creates: &[(&NewOrder, Option<&str>)],
) -> Option<Vec<Result<Done, WriteError>>> {
    match create_many(conn, creates, false).await {
        Ok(created) => Some(created.into_iter().map(|c| Ok(Done::Created(c))).collect()),
        Err(e) => {
            tracing::debug!(error = %e, writes = creates.len(), "writer: a batch's creates failed together; running them one by one");
            None
        }
    }
}

/// The creates among `jobs`: their positions, and each one's order and idempotency key.
fn creates_of(jobs: &[Work]) -> (Vec<usize>, Vec<(&NewOrder, Option<&str>)>) {
    jobs.iter()
        .enumerate()
        .filter_map(|(i, j)| match &j.op {
            Op::Create { new, key } => Some((i, (new, key.as_deref()))),
            _ => None,
        })
        .unzip()
}

/// A batch of one (a quiet moment): no savepoint, and a create inserts at once, as it
/// would alone (on SQLite in one statement, its own transaction: [`insert_new_alone`];
/// on PostgreSQL the order and its key in one statement outside `BEGIN`: [`insert_new`]);
/// when its key is stored already (the unique violation), it runs again through
/// [`apply`], which replays or refuses. Its own failure rolls the transaction back.
async fn single(
    conn: &mut AnyConnection,
    target: &Target,
    op: &Op,
    events: bool,
) -> Result<Result<Done, WriteError>, sqlx::Error> {
    let first = match op {
        Op::Create { new, key } if !events => {
            let alone = if target.sqlite {
                insert_new_alone(conn, new, key.as_deref()).await
            } else {
                insert_new(conn, new, key.as_deref(), false).await
            };
            match alone {
                Ok(order) => return Ok(Ok(Done::Created(Created::New(order)))),
                // An insert failed, and its statement's transaction with it: the rules
                // below decide.
                Err(e) if is_constraint_violation(&e) => Err(e),
                // The write lock or the commit failed, and with it the batch.
                Err(e) => return Err(e),
            }
        }
        _ => {
            conn.execute(target.begin()).await?;
            let first = match op {
                Op::Create { new, key } => insert_new(conn, new, key.as_deref(), events)
                    .await
                    .map(|o| Done::Created(Created::New(o))),
                other => apply(conn, other, events).await,
            };
            if first.is_err() {
                conn.execute("ROLLBACK").await?;
            }
            first
        }
    };
    let done = match first {
        Ok(done) => done,
        Err(e) => {
            if !crate::sql::is_unique_violation(&e) {
                return Ok(Err(WriteError::Db(e)));
            }
            conn.execute(target.begin()).await?;
            match apply(conn, op, events).await {
                Ok(done) => done,
                Err(e) => {
                    conn.execute("ROLLBACK").await?;
                    return Ok(Err(WriteError::Db(e)));
                }
            }
        }
    };
    conn.execute("COMMIT").await?;
    Ok(Ok(done))
}

/// The batch's creates (when there are two or more; found by [`creates_of`]: their
/// positions `at` among the batch's `jobs`) with a few statements for all
/// ([`create_many`]), under one savepoint (none when the batch holds creates alone: their
/// failure rolls back the transaction, which begins again); the answers by the jobs'
/// positions, `None` for the jobs left to [`one`]: every other write, and every create
/// when one of the statements failed (then rolled back, and each create runs alone to
/// find the one at fault).
async fn creates(
    conn: &mut AnyConnection,
    target: &Target,
    jobs: usize,
    at: &[usize],
    creates: &[(&NewOrder, Option<&str>)],
    events: bool,
) -> Result<Vec<Option<Result<Done, WriteError>>>, sqlx::Error> {
    let mut out: Vec<Option<Result<Done, WriteError>>> = (0..jobs).map(|_| None).collect();
    if creates.len() < 2 {
        return Ok(out);
    }
    // A batch of creates alone (the usual one) needs no savepoint: when they fail, nothing
    // else is in the transaction, which starts over instead. Two statements fewer per
    // batch, each a round trip on PostgreSQL.
    let whole = creates.len() == jobs;
    if !whole {
        conn.execute("SAVEPOINT bulk").await?;
    }
    match create_many(conn, creates, events).await {
        Ok(created) => {
            if !whole {
                conn.execute("RELEASE bulk").await?;
            }
            for (&i, c) in at.iter().zip(created) {
                out[i] = Some(Ok(Done::Created(c)));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, writes = creates.len(), "writer: a batch's creates failed together; running them one by one");
            if whole {
                conn.execute("ROLLBACK").await?;
                conn.execute(target.begin()).await?;
            } else {
                conn.execute("ROLLBACK TO bulk").await?;
                conn.execute("RELEASE bulk").await?;
            }
        }
    }
    Ok(out)
}

/// One write under its own savepoint: rolled back alone when it fails (the inner result).
/// A create whose idempotency key another process committed meanwhile (PostgreSQL replicas
/// sharing a database) runs once more, and then replays. `Err` when a savepoint statement
/// itself failed.
async fn one(
    conn: &mut AnyConnection,
    op: &Op,
    events: bool,
) -> Result<Result<Done, WriteError>, sqlx::Error> {
    let mut again = true;
    loop {
        conn.execute("SAVEPOINT w").await?;
        match apply(conn, op, events).await {
            Ok(done) => {
                conn.execute("RELEASE w").await?;
                return Ok(Ok(done));
            }
            Err(e) => {
                conn.execute("ROLLBACK TO w").await?;
                conn.execute("RELEASE w").await?;
                if !(again && crate::sql::is_unique_violation(&e)) {
                    return Ok(Err(WriteError::Db(e)));
                }
                again = false;
            }
        }
    }
}
