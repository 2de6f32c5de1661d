//! Orders, their validation, and ids.

use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

/// Most units in one order.
pub const MAX_QUANTITY: i64 = 1000;
/// Longest `customer_id` and `sku`.
pub const MAX_TEXT: usize = 128;
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
        if self.amount_cents < 0 {
            return Err(format!(
                "amount_cents must be at least 0, got {}",
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
    /// `ord_` and 24 hex digits, sortable by creation time.
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

/// A new order id: milliseconds since the epoch, the pid and a counter, so ids sort by
/// creation time and never collide between processes.
pub fn new_order_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    static PID: std::sync::LazyLock<u32> = std::sync::LazyLock::new(std::process::id);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    order_id(millis, *PID, n)
}

/// `ord_`, then `millis` in 12 hex digits (enough until the year 10889), and the low 24
/// bits of `pid` and of `n` in 6 each. Written digit by digit: `format!` with widths cost
/// about 2,000 instructions per order.
fn order_id(millis: u64, pid: u32, n: u32) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(28);
    id.push_str("ord_");
    for (v, digits) in [(millis, 12), (u64::from(pid), 6), (u64::from(n), 6)] {
        for i in (0..digits).rev() {
            id.push(char::from(HEX[((v >> (4 * i)) & 0xf) as usize]));
        }
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
    fn an_id_is_the_millis_the_pid_and_the_counter_in_hex() {
        for (millis, pid, n) in [
            (0, 0, 0),
            (1_796_300_000_123, 4_242, 7),
            (0xffff_ffff_ffff, 0x1234_5678, u32::MAX),
        ] {
            let want = format!(
                "ord_{millis:012x}{:06x}{:06x}",
                pid & 0xff_ffff,
                n & 0xff_ffff
            );
            assert_eq!(order_id(millis, pid, n), want);
        }
    }

    #[test]
    fn ids_are_unique_and_sortable() {
        let a = new_order_id();
        let b = new_order_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 28);
        assert!(a < b || a[..16] == b[..16]);
    }
}
