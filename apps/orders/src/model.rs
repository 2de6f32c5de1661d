//! Orders, their validation, and ids.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Most units in one order.
pub const MAX_QUANTITY: i64 = 1000;
/// Longest `customer_id` and `sku`.
pub const MAX_TEXT: usize = 128;
/// Largest `amount_cents` (a billion in the currency's main unit): more is a mistake, and
/// is refused before it reaches a payment gateway.
pub const MAX_AMOUNT_CENTS: i64 = 100_000_000_000;

/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The body of `POST /orders`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// Who orders.
    pub customer_id: String,
    /// What.
    pub sku: String,
    /// How many, 1..=1000.
    pub quantity: i64,
    /// Price in cents, at least 0.
    pub amount_cents: i64,
}

impl NewOrder {
    /// Check every field; the message names the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        text("customer_id", &self.customer_id)?;
        text("sku", &self.sku)?;
        if !(1..=MAX_QUANTITY).contains(&self.quantity) {
            return Err(format!(
                "quantity must be from 1 to {MAX_QUANTITY}, got {}",
                self.quantity
            ));
        }
        if !(0..=MAX_AMOUNT_CENTS).contains(&self.amount_cents) {
            return Err(format!(
                "amount_cents must be from 0 to {MAX_AMOUNT_CENTS}, got {}",
                self.amount_cents
            ));
        }
        Ok(())
    }

    /// A canonical form of the request, stored with its idempotency key: a retry with the
    /// same key must carry the same order.
    /// A JSON array, `["c1","s1",1,0]`, written straight from the fields (the stored
    /// fingerprints of earlier versions read the same).
    pub fn fingerprint(&self) -> String {
        let fields = (
            &self.customer_id,
            &self.sku,
            self.quantity,
            self.amount_cents,
        );
        // Strings and integers always serialize.
        serde_json::to_string(&fields).unwrap_or_default()
    }
}

fn text(field: &str, v: &str) -> Result<(), String> {
    if v.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if v.len() > MAX_TEXT {
        return Err(format!(
            "{field} must be at most {MAX_TEXT} bytes, got {}",
            v.len()
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(())
}

/// Whether an `Idempotency-Key` is acceptable: 1..=255 visible ASCII characters.
pub fn valid_idempotency_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY && key.iter().all(u8::is_ascii_graphic)
}

/// An order as stored and returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// `ord_` and 32 hex digits (12 of milliseconds, 20 random), sortable by creation time
    /// (older orders: 24 hex digits).
    pub id: String,
    /// Who ordered.
    pub customer_id: String,
    /// What.
    pub sku: String,
    /// How many.
    pub quantity: i64,
    /// Price in cents.
    pub amount_cents: i64,
    /// `created`, `paying`, `paid`, `payment_failed` or `cancelled`.
    pub status: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The payment gateway's charge, once `paid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge_id: Option<String>,
}

/// Status of a new order.
pub const CREATED: &str = "created";
/// Status of a cancelled order (only a `created` one can be cancelled).
pub const CANCELLED: &str = "cancelled";
/// Status of an order whose payment is in progress.
pub const PAYING: &str = "paying";
/// Status of a paid order.
pub const PAID: &str = "paid";
/// Status of an order whose payment failed (it may be paid again).
pub const PAYMENT_FAILED: &str = "payment_failed";

/// A new order id: `ord_` and [`new_id`]'s digits.
pub fn new_order_id() -> String {
    new_id("ord_")
}

/// A new id: `prefix`, the milliseconds since the epoch in 12 hex digits (so ids sort by
/// creation time, and `?after=` pages keep working across ids of either form), then 80
/// bits from the OS random source in 20 hex digits: unique without coordination between
/// replicas (every container is PID 1, and two replicas' clocks can agree to the
/// millisecond). Ids made before this form (`ord_` + millis + pid + counter, 28
/// characters) stay as they are.
pub fn new_id(prefix: &str) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    id_from(prefix, millis, random_80())
}

/// 80 random bits from the OS (`getrandom`); if it fails (it does not on Linux 3.17 and
/// later, and falls back to `/dev/urandom` before), a SipHash of a counter keyed from the
/// std library's own per-process random keys, still unique without coordination.
fn random_80() -> [u8; 10] {
    let mut bits = [0u8; 10];
    if getrandom::fill(&mut bits).is_ok() {
        return bits;
    }
    use std::hash::BuildHasher as _;
    static KEYS: std::sync::LazyLock<(std::hash::RandomState, std::hash::RandomState)> =
        std::sync::LazyLock::new(|| (std::hash::RandomState::new(), std::hash::RandomState::new()));
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (a, b) = (KEYS.0.hash_one(n), KEYS.1.hash_one(n));
    bits[..8].copy_from_slice(&a.to_be_bytes());
    bits[8..].copy_from_slice(&b.to_be_bytes()[..2]);
    bits
}

/// `prefix`, `millis` in 12 hex digits (enough until the year 10889) and `random` in 20.
/// Written digit by digit: `format!` with widths cost about 2,000 instructions per order.
fn id_from(prefix: &str, millis: u64, random: [u8; 10]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(prefix.len() + 32);
    id.push_str(prefix);
    for i in (0..12).rev() {
        id.push(char::from(HEX[((millis >> (4 * i)) & 0xf) as usize]));
    }
    for b in random {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    id
}

/// Now, as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_the_json_array_of_the_fields() {
        let o = NewOrder {
            customer_id: "c\"1".into(),
            sku: "s1".into(),
            quantity: 3,
            amount_cents: 1250,
        };
        assert_eq!(o.fingerprint(), r#"["c\"1","s1",3,1250]"#);
        let old = serde_json::json!([o.customer_id, o.sku, o.quantity, o.amount_cents]).to_string();
        assert_eq!(o.fingerprint(), old, "the same as the stored ones");
    }

    fn order() -> NewOrder {
        NewOrder {
            customer_id: "c1".into(),
            sku: "s1".into(),
            quantity: 1,
            amount_cents: 0,
        }
    }

    #[test]
    fn fields_are_validated_with_the_field_named() {
        assert!(order().validate().is_ok());
        let bad = [
            (
                NewOrder {
                    quantity: 0,
                    ..order()
                },
                "quantity",
            ),
            (
                NewOrder {
                    quantity: 1001,
                    ..order()
                },
                "quantity",
            ),
            (
                NewOrder {
                    amount_cents: -1,
                    ..order()
                },
                "amount_cents",
            ),
            (
                NewOrder {
                    amount_cents: MAX_AMOUNT_CENTS + 1,
                    ..order()
                },
                "amount_cents",
            ),
            (
                NewOrder {
                    amount_cents: i64::MAX,
                    ..order()
                },
                "amount_cents",
            ),
            (
                NewOrder {
                    customer_id: " ".into(),
                    ..order()
                },
                "customer_id",
            ),
            (
                NewOrder {
                    sku: "x".repeat(129),
                    ..order()
                },
                "sku",
            ),
            (
                NewOrder {
                    sku: "a\nb".into(),
                    ..order()
                },
                "sku",
            ),
        ];
        for (o, field) in bad {
            assert!(o.validate().unwrap_err().contains(field), "{o:?}");
        }
    }

    #[test]
    fn idempotency_keys_are_visible_ascii_up_to_255() {
        assert!(valid_idempotency_key(b"abc-123"));
        assert!(valid_idempotency_key(&[b'k'; 255]));
        assert!(!valid_idempotency_key(&[b'k'; 256]));
        assert!(!valid_idempotency_key(b""));
        assert!(!valid_idempotency_key(b"a b"));
    }

    #[test]
    fn an_id_is_the_millis_and_80_random_bits_in_hex() {
        let random = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc];
        assert_eq!(
            id_from("ord_", 1_796_300_000_123, random),
            format!("ord_{:012x}0123456789abcdeffedc", 1_796_300_000_123u64)
        );
        assert_eq!(
            id_from("evt_", 0xffff_ffff_ffff, [0; 10]),
            "evt_ffffffffffff00000000000000000000"
        );
    }

    #[test]
    fn two_generators_with_the_same_clock_and_pid_make_different_ids() {
        // The clock reading is the same; the pid plays no part; only the random bits differ.
        let millis = 1_796_300_000_123;
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| id_from("ord_", millis, random_80()))
            .collect();
        assert_eq!(ids.len(), 10_000);
        // Old ids (28 characters) and new ones (36) sort by their milliseconds first.
        let old = format!("ord_{:012x}{:06x}{:06x}", millis - 1, 1, 7);
        let new = id_from("ord_", millis, [0; 10]);
        assert!(old < new);
        let old_later = format!("ord_{:012x}{:06x}{:06x}", millis + 1, 1, 0);
        assert!(new < old_later);
    }

    #[test]
    fn ids_are_unique_and_sortable() {
        let a = new_order_id();
        let b = new_order_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert!(a < b || a[..16] == b[..16]);
    }
}
