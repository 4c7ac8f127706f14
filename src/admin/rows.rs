//! Result sets as the admin console sends them: RowDescription, DataRows
//! of text values, CommandComplete.

use bytes::{BufMut, BytesMut};

use crate::protocol::write::{self, message};

/// Column types, as PostgreSQL OIDs.
#[derive(Clone, Copy)]
pub enum Type {
    Text = 25,
    Int4 = 23,
    Int8 = 20,
    /// PgBouncer's statistics columns.
    Numeric = 1700,
}

/// A result set being built: columns first, then rows of text values.
pub struct Table {
    columns: Vec<(&'static str, Type)>,
    rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Type)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; values in column order, `None` for NULL.
    pub fn row(&mut self, values: Vec<Option<String>>) {
        debug_assert_eq!(values.len(), self.columns.len());
        self.rows.push(values);
    }

    /// Writes RowDescription, the DataRows and CommandComplete `SHOW`.
    pub fn write(&self, out: &mut BytesMut) {
        message(out, b'T', |b| {
            b.put_i16(self.columns.len() as i16);
            for (name, ty) in &self.columns {
                b.put_slice(name.as_bytes());
                b.put_u8(0);
                b.put_i32(0); // table oid
                b.put_i16(0); // column number
                b.put_i32(*ty as i32);
                b.put_i16(match ty {
                    Type::Int4 => 4,
                    Type::Int8 => 8,
                    _ => -1,
                });
                b.put_i32(-1); // type modifier
                b.put_i16(0); // text format
            }
        });
        for row in &self.rows {
            message(out, b'D', |b| {
                b.put_i16(row.len() as i16);
                for value in row {
                    match value {
                        Some(v) => {
                            b.put_i32(v.len() as i32);
                            b.put_slice(v.as_bytes());
                        }
                        None => b.put_i32(-1),
                    }
                }
            });
        }
        write::command_complete(out, "SHOW");
    }
}

/// Shorthand for a present value.
pub fn v(x: impl ToString) -> Option<String> {
    Some(x.to_string())
}

/// `2026-11-26 14:00:00 UTC` from microseconds since the epoch.
pub fn timestamp(us: u64) -> String {
    let mut text = crate::utc::date_time(us / 1_000_000);
    text[10] = b' ';
    format!("{} UTC", String::from_utf8_lossy(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(timestamp(1_795_701_600_000_000), "2026-11-26 14:00:00 UTC");
        assert_eq!(timestamp(951_782_400_000_000), "2000-02-29 00:00:00 UTC");
    }
}
