//! A batch's creates in a few statements whatever their number: one read of the stored
//! idempotency keys, then the orders, their keys (and their outbox events) in multi-row
//! inserts.

use super::*;

/// Carry out `creates` (each an order and its idempotency key, if any) in order, with a
/// handful of statements whatever their number: one read of the keys already stored, one
/// insert each for the new orders, their keys and their events. The answers are those of
/// running them one at a time in this order: the first use of a key creates, a later use
/// with the same body replays that order, with another body is refused.
///
/// # Errors
/// Database errors (a constraint, or a key another transaction inserted meanwhile). Then
/// some of the rows may be written: the caller rolls back (to a savepoint) and runs the
/// creates one by one to find the one at fault.
pub async fn create_many(
    conn: &mut AnyConnection,
    creates: &[(&NewOrder, Option<&str>)],
    events: bool,
) -> Result<Vec<Created>, sqlx::Error> {
    let dialect = Dialect::of(conn);
    // Keys stored before this batch: key -> (fingerprint, order id).
    let mut keys: Vec<&str> = creates.iter().filter_map(|(_, k)| *k).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut stored: HashMap<String, (String, String)> = HashMap::new();
    if !keys.is_empty() {
        static SQL: SqlCache = SqlCache::new();
        let width = dialect.width(keys.len());
        let sql = SQL.get(dialect, width, |dialect, n| {
            format!(
                "SELECT key, fingerprint, order_id FROM idempotency_keys WHERE key IN ({})",
                list(dialect, 1, n)
            )
        });
        let mut q = sqlx::query(&sql);
        for i in 0..width {
            q = q.bind(keys[i.min(keys.len() - 1)]);
        }
        for row in q.fetch_all(&mut *conn).await? {
            stored.insert(
                row.try_get("key")?,
                (row.try_get("fingerprint")?, row.try_get("order_id")?),
            );
        }
    }
    // The replays of stored keys need their orders.
    let mut old: HashMap<String, Order> = HashMap::new();
    if !stored.is_empty() {
        let ids: Vec<&String> = stored.values().map(|(_, id)| id).collect();
        let width = dialect.width(ids.len());
        let sql = format!(
            "SELECT {COLUMNS} FROM orders WHERE id IN ({})",
            list(dialect, 1, width)
        );
        let mut q = sqlx::query(&sql);
        for i in 0..width {
            q = q.bind(ids[i.min(ids.len() - 1)].as_str());
        }
        for row in q.fetch_all(&mut *conn).await? {
            let o = order_of(&row)?;
            old.insert(o.id.clone(), o);
        }
    }
    // Decide each create in order; keys first used in this batch are remembered as they go.
    let created_at = now_rfc3339();
    let mut fresh: HashMap<&str, (String, usize)> = HashMap::new();
    let mut new_orders: Vec<Order> = Vec::new();
    let mut new_keys: Vec<(&str, String, usize)> = Vec::new();
    // The answers; `None` for a new order, which moves into its answer once the orders are
    // inserted (rather than being copied: five strings).
    let mut out: Vec<Option<Created>> = Vec::with_capacity(creates.len());
    for (new, key) in creates {
        let fingerprint = key.map(|_| new.fingerprint());
        let seen = key.and_then(|k| {
            stored
                .get(k)
                .map(|(f, id)| (f.as_str(), old.get(id).cloned()))
                .or_else(|| {
                    fresh
                        .get(k)
                        .map(|(f, i)| (f.as_str(), Some(new_orders[*i].clone())))
                })
        });
        match (seen, &fingerprint) {
            (Some((f, _)), Some(fp)) if f != fp => out.push(Some(Created::KeyMismatch)),
            (Some((_, Some(order))), _) => out.push(Some(Created::Replayed(order))),
            (Some((_, None)), _) => return Err(sqlx::Error::RowNotFound),
            (None, _) => {
                if let (Some(k), Some(fp)) = (key, fingerprint) {
                    fresh.insert(k, (fp.clone(), new_orders.len()));
                    new_keys.push((k, fp, new_orders.len()));
                }
                out.push(None);
                new_orders.push(fresh_order(new, &created_at));
            }
        }
    }
    insert_rows(conn, &new_orders, &new_keys, events).await?;
    // The new orders, in the order they were decided.
    let mut new_orders = new_orders.into_iter();
    let mut answers = Vec::with_capacity(out.len());
    for answer in out {
        answers.push(match answer {
            Some(created) => created,
            None => Created::New(new_orders.next().ok_or(sqlx::Error::RowNotFound)?),
        });
    }
    Ok(answers)
}

/// A new order for `new`: a fresh id, status `created`, created at `created_at` (RFC 3339;
/// the orders of one batch share their transaction's, formatted once).
pub(super) fn fresh_order(new: &NewOrder, created_at: &str) -> Order {
    Order {
        id: new_order_id(),
        customer_id: new.customer_id.clone(),
        sku: new.sku.clone(),
        quantity: new.quantity,
        amount_cents: new.amount_cents,
        status: CREATED.into(),
        created_at: created_at.to_owned(),
        charge_id: None,
    }
}

/// Insert `orders`, the idempotency `keys` (key, fingerprint, index of its order) and,
/// with `events`, an `order.created` event per order: one statement each, except on
/// PostgreSQL, where the orders and their keys go in one statement (one round trip fewer,
/// and atomic by itself: see [`create_many`]).
pub(super) async fn insert_rows(
    conn: &mut AnyConnection,
    orders: &[Order],
    keys: &[(&str, String, usize)],
    events: bool,
) -> Result<(), sqlx::Error> {
    let dialect = Dialect::of(conn);
    if dialect == Dialect::Postgres && !keys.is_empty() {
        insert_orders_and_keys(conn, orders, keys).await?;
    } else {
        insert_orders_then_keys(conn, dialect, orders, keys).await?;
    }
    if events {
        let orders: Vec<&Order> = orders.iter().collect();
        outbox::enqueue_many(conn, ORDER_CREATED, &orders).await?;
    }
    Ok(())
}

/// `orders`, then their idempotency `keys`, each in statements of [`Dialect::chunks`].
async fn insert_orders_then_keys(
    conn: &mut AnyConnection,
    dialect: Dialect,
    orders: &[Order],
    keys: &[(&str, String, usize)],
) -> Result<(), sqlx::Error> {
    static ORDERS: SqlCache = SqlCache::new();
    static KEYS: SqlCache = SqlCache::new();
    for (at, n) in dialect.chunks(orders.len()) {
        let sql = ORDERS.get(dialect, n, |dialect, n| {
            format!(
                "INSERT INTO orders ({NEW_COLUMNS}) VALUES {}",
                placeholders(dialect, n, 7)
            )
        });
        let mut q = sqlx::query(&sql);
        for o in &orders[at..at + n] {
            q = bind_new_order(q, o);
        }
        q.execute(&mut *conn).await?;
    }
    for (at, n) in dialect.chunks(keys.len()) {
        let sql = KEYS.get(dialect, n, |dialect, n| {
            format!(
                "INSERT INTO idempotency_keys (key, fingerprint, order_id, created_at) VALUES {}",
                placeholders(dialect, n, 4)
            )
        });
        let mut q = sqlx::query(&sql);
        for key in &keys[at..at + n] {
            q = bind_new_key(q, key, orders);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// On PostgreSQL, `orders` and their idempotency `keys` in one statement: the keys'
/// insert with the orders' as a data-modifying `WITH`. The foreign key from a key to its
/// order is checked at the end of the statement, when both are in.
async fn insert_orders_and_keys(
    conn: &mut AnyConnection,
    orders: &[Order],
    keys: &[(&str, String, usize)],
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "WITH o AS (INSERT INTO orders ({NEW_COLUMNS}) VALUES {}) \
         INSERT INTO idempotency_keys (key, fingerprint, order_id, created_at) VALUES {}",
        rows_from(Dialect::Postgres, 1, orders.len(), 7),
        rows_from(Dialect::Postgres, 1 + orders.len() * 7, keys.len(), 4)
    );
    let mut q = sqlx::query(&sql);
    for o in orders {
        q = bind_new_order(q, o);
    }
    for key in keys {
        q = bind_new_key(q, key, orders);
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

/// `q` with an idempotency key's columns bound, in order: the key, its fingerprint, and
/// the id and `created_at` of its order (`orders[index]`).
pub(super) fn bind_new_key<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    (key, fingerprint, index): &'q (&str, String, usize),
    orders: &'q [Order],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let o = &orders[*index];
    q.bind(*key)
        .bind(fingerprint.as_str())
        .bind(o.id.as_str())
        .bind(o.created_at.as_str())
}

/// `q` with the [`NEW_COLUMNS`] of `o` bound, in order.
pub(super) fn bind_new_order<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    o: &'q Order,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(o.id.as_str())
        .bind(o.customer_id.as_str())
        .bind(o.sku.as_str())
        .bind(o.quantity)
        .bind(o.amount_cents)
        .bind(o.status.as_str())
        .bind(o.created_at.as_str())
}
