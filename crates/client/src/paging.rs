//! [`ScanPages`]: a scan of any size, one linearizable page at a time.

use bytes::Bytes;
use raftkv_rpc::{ScanReply, ScanStart};

use crate::{Client, ClientError};

/// The pages of a scan of every key with a prefix (from a start key on, up to a limit
/// if one is given), each one read of [`Client::scan_page`], linearizable unless
/// stale. The pages are not one snapshot: a key written between two pages is seen or
/// not depending on where it falls.
#[derive(Clone, Debug)]
pub struct ScanPages {
    prefix: Bytes,
    start: ScanStart,
    /// Pairs still to return (`None`: all of them).
    remaining: Option<u64>,
    stale: bool,
    /// No page follows.
    done: bool,
    /// The limit stopped the scan while pairs remained.
    cut: bool,
    /// Then, the first key it did not return, when known.
    next_key: Option<Bytes>,
    pages: u64,
}

impl ScanPages {
    /// A scan of the keys starting with `prefix`, from `start` on; at most `limit`
    /// pairs in all (`None`: every one).
    pub fn new(prefix: impl Into<Bytes>, start: ScanStart, limit: Option<u64>, stale: bool) -> Self {
        ScanPages {
            prefix: prefix.into(),
            start,
            remaining: limit,
            stale,
            done: limit == Some(0),
            cut: false,
            next_key: None,
            pages: 0,
        }
    }

    /// The next page (`Ok(None)`: the scan is over). A page may be empty only when it
    /// is the first (no key matched).
    pub async fn next(&mut self, client: &Client) -> Result<Option<ScanReply>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let max = raftkv_kv::MAX_SCAN_LIMIT as u64;
        // On the last page, one pair more than needed: its key is where to continue.
        let ask = self.remaining.map_or(max, |r| r.saturating_add(1).min(max));
        let mut page = client.scan_page(self.prefix.clone(), self.start.clone(), ask as u32, self.stale).await?;
        self.pages += 1;
        if let Some(remaining) = self.remaining.as_mut() {
            if page.items.len() as u64 > *remaining {
                let extra = page.items.split_off(*remaining as usize);
                self.next_key = extra.into_iter().next().map(|(k, _)| k);
                page.more = true;
            }
            *remaining -= page.items.len() as u64;
            if *remaining == 0 {
                self.done = true;
                self.cut = page.more;
            }
        }
        match page.items.last() {
            Some((last, _)) if page.more => self.start = ScanStart::After(last.clone()),
            _ => self.done = true,
        }
        Ok(Some(page))
    }

    /// Whether the limit stopped the scan while pairs remained.
    pub fn stopped_by_limit(&self) -> bool {
        self.cut
    }

    /// The first key not returned because of the limit (continue from it), when
    /// known: it is, unless the last page also reached its byte bound.
    pub fn next_key(&self) -> Option<&Bytes> {
        self.next_key.as_ref()
    }

    /// Pages read so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }
}
